"""Deployments: modules served as a model API or a JupyterLab, behind the platform."""
