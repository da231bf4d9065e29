"""The stages: name -> "module:Class" (imported when a command needs it). The build order comes
from their `deps` and `after` (graph.Orchestrator.selected); this order only breaks ties."""

STAGES: dict[str, str] = {
    "model": ".model_engine:ModelEngine",  # first: appdisk copies its model repository
    "appdisk": ".appdisk:AppDisk",
    "os": ".os_image:OsImage",
    "measurements": ".measurements:Measurements",
    "provenance": ".provenance:Provenance",  # last: it describes every other stage's outputs
}
