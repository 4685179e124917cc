//! The node's name, as RabbitMQ names nodes `rabbit@HOST`: `warren@` and
//! the short host name. Shown by the management API and Prometheus, and
//! carried in the firehose's `node` header.

/// `warren@` and the short host name (`localhost` if it cannot be read).
pub(crate) fn name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length, which is passed; the
    // name is NUL-terminated within it when the call succeeds.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(0);
    let host = if ok && end > 0 {
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    // RabbitMQ uses the short host name.
    let short = host.split('.').next().unwrap_or("localhost");
    format!("warren@{short}")
}
