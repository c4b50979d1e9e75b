"""The mailer: records mail jobs from the private mail exchange and sends them over SMTP."""
