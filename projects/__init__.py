"""Projects: one folder each, a LightningModule on the shared layer in `common`."""
