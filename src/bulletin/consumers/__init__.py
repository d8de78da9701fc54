"""Events from a message broker: the source port, the RabbitMQ source, and the consume loop."""
