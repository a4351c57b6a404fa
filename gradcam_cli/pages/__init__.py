"""The HTML pages: a run's index.html (`run`), comparison.html (`comparison`) and sanity.html
(`sanity`), on one skeleton (`document`) with their CSS and JS as package data (`assets/`).

Nothing is imported here: `gradcam --help` and the JSON-only paths load no page code.
"""
