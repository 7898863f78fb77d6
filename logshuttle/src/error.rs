//! The crate's one error type.

/// What can go wrong starting, reconfiguring or feeding the shuttle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "app {app:?} has {count} drains, more than the limit of {max} (logs.max_drains_per_app)"
    )]
    TooManyDrains {
        app: String,
        count: usize,
        max: usize,
    },
    #[error(
        "drain {drain} of app {app:?}: http:// drains are off (use https://, or set logs.allow_http_drains)"
    )]
    HttpDrainsOff { app: String, drain: String },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka: {0}")]
    KafkaSetup(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    #[error("the bus is closed")]
    Closed,
    #[error("log record: {0}")]
    BadRecords(String),
}
