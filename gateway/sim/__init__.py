"""Simulated devices and a test MQTT port: stand-ins for hardware we cannot have.

- ``gateway.sim.shelly``: Shelly Gen1/Gen2 plugs, switches and meters, each its
  own MQTT client speaking the devices' exact topics and payloads
  (``shelly_gen1``, ``shelly_gen2``, on ``mqtt_device``'s connection and load model);
- ``gateway.sim.phidget``: a fake Phidget22 board for the USB relay driver;
- ``gateway.sim.port``: ``PahoPort``, an ``MqttPort`` over paho for tests and demos.

Nothing is imported here, so importing one simulator does not load the others.
"""
