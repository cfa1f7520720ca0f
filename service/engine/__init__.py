from segserve.engine.base import Engine, EngineInfo, EngineUnavailable, Tensors
from segserve.engine.factory import create_engine

__all__ = ["Engine", "EngineInfo", "EngineUnavailable", "Tensors", "create_engine"]
