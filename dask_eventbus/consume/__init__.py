"""What every consumer of the bus shares: inputs, the reader and the state model."""
