"""The DAQ-to-node wire protocol, its sender and receiver, and the hardware-in-the-loop rig."""
