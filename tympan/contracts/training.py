"""The JSON contract of a fold record (pydantic v2): one finished cross-validation fold, as data.

Folds trained on different days and machines assemble into one five-fold figure only when their
``config_hash`` is equal (:mod:`tympan.training.records`), so the record carries everything the
hash was computed from (``config``) beside what it measured.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["FoldRecord", "FoldRecords", "FOLD_RECORDS_SCHEMA"]

FOLD_RECORDS_SCHEMA = "tympan.fold_records/1"


class FoldRecord(BaseModel):
    config_hash: str = Field(description="sha256 (16 hex) of `config`: what decides the result", examples=["3fa2c1d09b7e44aa"])
    recipe: str = Field(examples=["robust"])
    arch: str = Field(examples=["mn04"])
    init: str | None = Field(None, description="pretrained weights (file name), or null", examples=["mn04_as_mAP_432.pt"])
    epochs: int = Field(ge=1)
    seed: int
    precision: str = Field(description="resolved training arithmetic: fp32 or bf16", examples=["fp32"])
    lr: float
    batch_size: int
    fold: int = Field(ge=1, description="the held-out fold")
    accuracy: float = Field(ge=0, le=1, description="final-epoch model on the held-out fold")
    n: int = Field(ge=1, description="held-out clips")
    device: str = Field(examples=["cpu"])
    machine: str = Field(description="CPU model, cores, torch version", examples=["AMD EPYC, 2 cores, torch 2.13.0+cpu"])
    seconds_per_epoch: float
    seconds: float
    code_version: str
    data_fingerprint: str | None = None
    recorded: str = Field(description="UTC time the fold finished")
    config: dict[str, Any] = Field(description="the hashed configuration (training, front end, data, init)")


class FoldRecords(BaseModel):
    schema_: str = Field(FOLD_RECORDS_SCHEMA, alias="schema")
    records: list[FoldRecord] = Field(default_factory=list)

    model_config = {"populate_by_name": True}
