"""The wire format: protocol v1 messages and frames, bus channel names."""
