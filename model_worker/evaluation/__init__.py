"""`python -m model_worker eval DATASET`: how well a model (or several) labels a labelled set of pictures.

dataset.py reads the folder or CSV, metrics.py computes the figures (pure Python), run.py drives the
engine(s) and the template variants, report.py prints text or JSON, plot.py draws the confusion matrix.
"""
