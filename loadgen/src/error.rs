//! loadgen's one error type: a message for the operator. Nothing on the hot path
//! builds one; connection set-up, protocol surprises and I/O failures do.

use std::fmt;

use warren_protocol::FrameError;

#[derive(Debug, Clone)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(format!("i/o error: {e}"))
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error(format!("protocol error from the broker: {e}"))
    }
}

impl From<glommio::GlommioError<()>> for Error {
    fn from(e: glommio::GlommioError<()>) -> Self {
        Error(format!("runtime error: {e}"))
    }
}
