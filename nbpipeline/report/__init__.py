"""What people review: the stage reports' summary and the index page."""
