"""Online serving: a dynamic batcher (batching.py) in front of one LightboxModel (predictor.py), exposed
over a simple JSON API and the Open Inference Protocol (app.py, v2.py), with hot swap to new registry
versions (reload.py). Entry point: ``serving.server.run(settings)``.
"""
