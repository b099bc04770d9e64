"""The recorded transition schema shared by every sink (see the README's "Data schema")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.codecs import Codec, codec_for
from relayrl_gym.schema.spaces import space_from_json, space_to_json

__all__ = ["INFO_TYPE", "METADATA_KEY", "SCHEMA_VERSION", "TransitionSchema"]

#: Key of the JSON run description in the Arrow schema metadata.
METADATA_KEY = b"relayrl_gym"
#: Version of the row layout; bumped on any incompatible change.
SCHEMA_VERSION = 2  # 2: `info` stored as INFO_TYPE (numbers where they are numbers)

MASK_TYPE = pa.list_(pa.bool_())
#: The ``info`` column as stored: a row's info dict as numbers when its values are all floats
#: (``floats``) or all integers (``ints``), in the dict's key order; as JSON text otherwise
#: (``json``); null when the env gave no info. Readers give every row's JSON text
#: (`relayrl_gym.schema.infos.infos_to_text`); runs of schema version 1 hold the text itself.
INFO_TYPE = pa.struct([
    pa.field("floats", pa.map_(pa.string(), pa.float64())),
    pa.field("ints", pa.map_(pa.string(), pa.int64())),
    pa.field("json", pa.string()),
])


@dataclass(frozen=True)
class TransitionSchema:
    """The observation/action spaces of a run, their codecs, and the Arrow schema built from them.

    >>> from gymnasium import spaces
    >>> ts = TransitionSchema.build(spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    >>> ts.arrow.field("action").type
    DataType(int64)
    """

    observation_space: spaces.Space
    action_space: spaces.Space
    obs: Codec
    action: Codec
    data_type: pa.DataType
    arrow: pa.Schema

    @classmethod
    def build(
        cls,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        metadata: dict[str, Any] | None = None,
        data_type: pa.DataType | None = None,
    ) -> TransitionSchema:
        """Builds the schema; ``metadata`` (the run description) goes into the schema metadata."""
        obs, action = codec_for(observation_space), codec_for(action_space)
        data_type = data_type if data_type is not None else pa.null()
        fields = [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("actor_id", pa.string(), nullable=False),
            pa.field("agent_id", pa.string(), nullable=False),
            pa.field("env_index", pa.int32(), nullable=False),
            pa.field("episode_id", pa.int64(), nullable=False),
            pa.field("step", pa.int64(), nullable=False),
            obs.field("obs"),
            action.field("action"),
            pa.field("reward", pa.float64(), nullable=False),
            obs.field("next_obs"),
            pa.field("terminated", pa.bool_(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("model_version", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False),
            pa.field("mask", MASK_TYPE, nullable=True),
            pa.field("data", data_type, nullable=True),
            pa.field("info", INFO_TYPE, nullable=True),
        ]
        meta = dict(metadata or {})
        meta.setdefault("schema_version", SCHEMA_VERSION)
        meta["observation_space"] = space_to_json(observation_space)
        meta["action_space"] = space_to_json(action_space)
        schema = pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta).encode()})
        return cls(observation_space, action_space, obs, action, data_type, schema)

    @property
    def metadata(self) -> dict[str, Any]:
        """The run description stored with the data."""
        return json.loads(self.arrow.metadata[METADATA_KEY])

    @classmethod
    def from_arrow(cls, schema: pa.Schema) -> TransitionSchema:
        """Rebuilds the schema (spaces and codecs) from the metadata of a recorded file."""
        meta = json.loads((schema.metadata or {})[METADATA_KEY])
        version = int(meta.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise DatasetError(f"these transitions were recorded by a newer relayrl-gym (data "
                               f"schema version {version}; this one reads up to "
                               f"{SCHEMA_VERSION}); upgrade relayrl-gym")
        info = schema.field("info").type if "info" in schema.names else pa.string()
        if info != INFO_TYPE and info != pa.string():
            raise DatasetError(f"the info column is {info}; recorded runs hold {INFO_TYPE} "
                               "(schema version 2) or JSON text (version 1)")
        obs_space = space_from_json(meta["observation_space"])
        act_space = space_from_json(meta["action_space"])
        return cls(obs_space, act_space, codec_for(obs_space), codec_for(act_space),
                   schema.field("data").type, schema)
