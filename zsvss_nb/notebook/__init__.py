"""What the notebooks call: model checks, figures (viz), widgets and explorers, feature probing."""
