"""Model definitions (plain nn.Modules) registered by name."""
