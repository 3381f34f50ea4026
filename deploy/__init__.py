"""Run the Flower app on Flower's Deployment Engine (SuperLink + SuperNodes as real
processes) with TLS and SuperNode authentication; see :mod:`deploy.local_deployment`."""
