"""Optional Sparkplug B 3.0 edge node beside contract v1 (`sparkplug:` in the config).

The daemon is the edge node and each camera a device, so SCADA hosts (Ignition's MQTT
Engine, HiveMQ/Cirrus Link hosts) discover them and their metrics without mapping topics by
hand. It consumes the contract-v1 messages the publisher already produces (through its
message listener) and has its own MQTT session, because its will must be the NDEATH.

`streamd.config` imports `SparkplugSettings` from `streamd.sparkplug.settings`; the node
itself is `streamd.sparkplug.node.EdgeNode`, imported only by the app when enabled.
"""
