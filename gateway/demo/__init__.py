"""``awgw demo``: the whole product on the virtual rig (gateway/demo/run.py)."""

from gateway.demo.run import DemoReport, print_report, run_demo

__all__ = ["DemoReport", "print_report", "run_demo"]
