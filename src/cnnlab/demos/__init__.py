"""Small runnable demos of the chapter's examples (``python -m cnnlab.demos.<name>``)."""
