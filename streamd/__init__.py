"""streamd: a real-time video-stream analytics daemon publishing frame-synced MQTT."""

__version__ = "0.1.0"
