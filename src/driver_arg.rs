//! `--io-driver`'s values, shared by `run` and the `bench` commands that start ringlb.

use clap::ValueEnum;
use proxy_core::IoDriver;

/// I/O driver: io_uring when available (auto), io_uring or fail (uring), or epoll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DriverArg {
    Auto,
    Uring,
    Epoll,
}

impl DriverArg {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DriverArg::Auto => "auto",
            DriverArg::Uring => "uring",
            DriverArg::Epoll => "epoll",
        }
    }
}

impl From<DriverArg> for IoDriver {
    fn from(d: DriverArg) -> Self {
        match d {
            DriverArg::Auto => IoDriver::Auto,
            DriverArg::Uring => IoDriver::Uring,
            DriverArg::Epoll => IoDriver::Epoll,
        }
    }
}
