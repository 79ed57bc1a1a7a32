"""The outbox (peewee on SQLite) and the MQTT link to the collector."""
