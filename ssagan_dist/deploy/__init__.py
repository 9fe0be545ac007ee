"""Deployment helpers: offline checks of the Kubernetes manifests in ``k8s/`` (``check``)."""
