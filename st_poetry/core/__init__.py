"""The layer everything stands on: errors, option declarations, file formats and atomic outputs, model loading
and encoding backends."""
