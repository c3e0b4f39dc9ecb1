"""``cxrtl serve``: a trained model behind a REST API and a self-contained web page (FastAPI + uvicorn).

The package is optional (``pip install 'cxrtl[serve]'``): :func:`cxrtl.serve.app.create_app` builds the app
around a :class:`cxrtl.inference.predict.Predictor`; ``cxrtl serve`` loads the model once and runs it.
"""
