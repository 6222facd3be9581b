"""Explorer: the clinician case explorer (widgets and the voila service)."""
