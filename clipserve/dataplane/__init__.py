"""The data plane: attached consumers (producer → feeder → channel), in-process or in a process of its own."""
