"""The long-running service: per tenant + rule group workers over NATS JetStream, and the API."""
