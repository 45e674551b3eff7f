"""Entrypoint for prefect.yaml (`flows/retrain.py:retrain_flow`); the flow is causalrec.flows.retrain."""
from causalrec.flows.retrain import retrain_flow

__all__ = ["retrain_flow"]

if __name__ == "__main__":
    retrain_flow()
