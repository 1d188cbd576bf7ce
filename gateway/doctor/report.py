"""placeholder replaced below"""
import argparse


async def run_doctor(args: argparse.Namespace) -> int:
    raise NotImplementedError
