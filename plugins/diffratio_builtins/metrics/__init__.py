"""Built-in metrics: energy distance (2-D and other point data), FID and FCD (images)."""
