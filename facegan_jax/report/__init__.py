"""Run reports: curves, progress GIF, HTML page, memorisation pictures (`run_report`)."""
