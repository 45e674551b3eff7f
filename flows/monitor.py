"""Entrypoint for prefect.yaml (`flows/monitor.py:monitor_flow`); the flow is causalrec.flows.monitor."""
from causalrec.flows.monitor import monitor_flow

__all__ = ["monitor_flow"]

if __name__ == "__main__":
    monitor_flow()
