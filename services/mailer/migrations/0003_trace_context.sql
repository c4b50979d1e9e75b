-- The trace context of the mail job that asked for the delivery: the SMTP send, whenever
-- it happens, continues that trace (libs/common/tracing.py). NULL when traces are off.
ALTER TABLE deliveries ADD COLUMN trace_context text;
