from segserve.engine.base import Engine, EngineInfo, EngineUnavailable, TensorEngine, Tensors
from segserve.engine.factory import create_engine, create_engines

__all__ = ["Engine", "EngineInfo", "EngineUnavailable", "TensorEngine", "Tensors", "create_engine", "create_engines"]
