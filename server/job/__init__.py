"""One training job's shell around the core: its lifecycle, upload intake, settling, restore."""
