"""The client ``nbp run`` talks to its stage's kernel with: jupyter_client's asynchronous
client, minus two waits that are idle time on every stage.

* ``wait_for_ready`` (called by nbclient once the kernel is started) ends in jupyter_client
  with a drain of IOPub that returns only after 0.2 s without a message: 0.2 s idle per
  stage. nbclient reads IOPub by the parent id of each request it sends, so messages
  left over from start-up are skipped anyway; the drain is left out.
* The client's sockets connect while the kernel is still importing (~0.3 s) and has not
  bound its IPC sockets yet; zmq retries such a connection every 100 ms by default, so the
  first reply could wait up to 100 ms more. The client's sockets retry every
  :data:`RECONNECT_MS` instead.

Imported only when a kernel starts (jupyter_client and zmq are ~0.1 s of imports).
"""

from __future__ import annotations

import math
import time
from queue import Empty

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from traitlets import default

RECONNECT_MS = 10
_IOPUB_CONNECTED_SECONDS = 0.2  # jupyter_client's wait for a first IOPub message


class LeanClient(AsyncKernelClient):  # type: ignore[misc]
    """An :class:`AsyncKernelClient` whose readiness check does not idle (module docstring)."""

    @default("context")
    def _context_default(self) -> zmq.asyncio.Context:
        self._created_context = True
        context = zmq.asyncio.Context()
        context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        return context

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        """Return once the kernel has answered ``kernel_info`` on the shell channel and
        IOPub is connected (a message arrived on it), as jupyter_client's does."""
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while True:
            self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:
                    await self.iopub_channel.get_msg(timeout=_IOPUB_CONNECTED_SECONDS)
                except Empty:
                    pass  # IOPub not connected yet: ask again
                else:
                    self._handle_kernel_info_reply(reply)
                    return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")
