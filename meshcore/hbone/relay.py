"""The relay machinery of one HBONE connection: tunnels relayed to plain sockets.

A tunnel relayed to a socket (`HboneStream.relay`) gets a `RelayLink`, and its
connection's `Relays` moves bytes for it without waking the relay's task:

- the socket sink: arriving DATA is written straight into the socket from the reader
  (`deliver`), and END_STREAM half-closes it (`finish_output`). Only when the socket is
  full does a short-lived backlog task start, in the connection's nursery, to wait for it
  and write the rest (`start_backlog`); an idle relayed tunnel costs one task, the
  relay's own, parked.
- the poller, the other direction: every idle relay's socket is in one edge-triggered
  epoll set per connection (`poll`); what arrives is read, framed and written from there,
  so a request costs no wakeup of its relay's task. The relay task reads only what needs
  waiting for (EOF, full windows, bulk transfers), handed back to it by `_hand_off`.
"""
from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import notify_closing, wait_readable

from meshcore import sockio

from .errors import LocalProtocolError
from .streamstate import StreamState

if TYPE_CHECKING:
    from .mux import Mux

# A relayed socket's reads. glibc would serve a 256 KiB recv() buffer with mmap and page
# faults, but ztunnel fixes malloc's thresholds (meshcore.malloc), so it comes off the heap
# and a short read costs what a 64 KiB one does; a bulk transfer then takes a quarter of the
# reads, frames, TLS batches and trips through Python per byte.
RELAY_READ = 256 * 1024
# A FIN or an error raises one edge, which a read of the bytes before it consumes.
_HANGUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class RelayLink:
    """A relayed stream's socket and the relay's own state."""
    __slots__ = ("sock", "error", "backlog", "out_done", "polled", "edge", "hup", "handoff")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock             # DATA is written into it
        self.error: OSError | None = None   # writing into `sock` failed (the app reset)
        self.backlog = False         # a backlog task is writing `received` into `sock`
        self.out_done = False        # END_STREAM reached `sock` as a half-close
        self.polled = False          # the relay is idle: the connection's poller reads `sock` for it
        self.edge = False            # `sock` became readable while the relay task was reading it
        self.hup = False             # the app's FIN (or an error) is queued behind the data: no more edges
        self.handoff: bytes | OSError | None = None   # what the poller read but could not send


def _read_after_hangup(sock: socket.socket) -> bytes | OSError | None:
    try:
        return sock.recv(RELAY_READ)
    except BlockingIOError:
        return None   # a hangup without EOF (an error): the relay task reads on
    except OSError as e:
        return e


class Relays:
    """The poller, the socket sink and the backlog tasks of one connection (`Mux.relays`)."""

    def __init__(self, mux: Mux) -> None:
        self._mux = mux
        self.nursery: trio.Nursery | None = None   # the connection's, for backlog tasks
        self.backlog_tasks = 0    # relayed streams whose socket filled up (a backlog task ran)
        self.polled_reads = 0     # reads the poller framed itself, without the relay's task
        self._ep = select.epoll()
        self._watched: dict[int, tuple[int, StreamState, RelayLink]] = {}

    def close(self) -> None:
        self._watched.clear()
        notify_closing(self._ep)
        self._ep.close()

    # ---- a relay's lifetime ---------------------------------------------------------
    def attach(self, stream_id: int, st: StreamState, sock: socket.socket) -> RelayLink:
        """Start relaying `st` to `sock`: what arrived before goes into it first."""
        link = st.link = RelayLink(sock)
        if st.received:
            self.start_backlog(stream_id, st)
        elif st.recv_ended:
            self.finish_output(st)
        return link

    def watch(self, stream_id: int, st: StreamState) -> None:
        """Add the relay's socket to the poller's set (for as long as the relay runs)."""
        fd = st.link.sock.fileno()
        self._ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        self._watched[fd] = (stream_id, st, st.link)

    def detach(self, st: StreamState) -> None:
        """The relay ended (its caller closes the socket next)."""
        link, st.link = st.link, None
        if link is None:
            return
        link.handoff = None
        fd = link.sock.fileno()
        if self._watched.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass   # the connection ended and closed the set
        if link.backlog:
            notify_closing(link.sock)   # the backlog task stops

    # ---- socket -> tunnel: the poller ------------------------------------------------
    async def poll(self) -> None:
        """Read idle relays' sockets as they become readable, in this one task.

        A request arriving on an idle relay is read, framed and written from here, with
        every other socket that became ready in the same poll: one wakeup, one TLS record
        and one write() for the batch, and no task switch, epoll_ctl() or rescheduling per
        request. Anything but a short read that fits the windows (EOF, an error, a full
        read, a tunnel out of window, a congested connection) is handed back to the
        relay's own task (`_hand_off`), which waits as a sender must."""
        ep, watched = self._ep, self._watched
        while True:
            await wait_readable(ep)
            for fd, events in ep.poll(0):
                entry = watched.get(fd)
                if entry is not None:
                    if events & _HANGUP:
                        entry[2].hup = True
                    self._readable(*entry)
            self._mux.push()

    def _readable(self, stream_id: int, st: StreamState, link: RelayLink) -> None:
        if not link.polled:
            link.edge = True   # the relay task is reading: it reads again before it idles
            return
        mux = self._mux
        if mux.congested or st.reset_code is not None or mux.broken is not None:
            self._hand_off(st, link, None)
            return
        try:
            data = link.sock.recv(RELAY_READ)
        except BlockingIOError:
            return   # an edge for bytes the relay task already read
        except OSError as e:
            self._hand_off(st, link, e)
            return
        if data:
            try:
                n = mux.codec.send(stream_id, data)
            except LocalProtocolError:
                n = 0   # the relay's own send reports it
            st.sent += n
            more = len(data) == RELAY_READ or link.hup
            if n == len(data) and not more:
                self.polled_reads += 1
                return   # the common case: a request, framed
            link.edge = more   # a full read may have left more, or EOF is queued: the relay reads on
            data = data[n:] or None
            if data is None and n < RELAY_READ:
                # All of a short read framed, and the app's FIN behind it (a response, then
                # close): read the EOF here too, so END_STREAM leaves with the data.
                data = _read_after_hangup(link.sock)
        if data == b"":
            self._end(stream_id, st)
        self._hand_off(st, link, data)

    def _end(self, stream_id: int, st: StreamState) -> None:
        """EOF from the relay's socket: END_STREAM now, with whatever this poll framed (the
        relay task, handed the EOF, then finds its direction ended). If the codec refuses,
        the relay's own end raises why."""
        if st.send_ended or st.reset_code is not None or self._mux.broken is not None:
            return
        try:
            self._mux.codec.half_close(stream_id)
        except LocalProtocolError:
            return
        st.send_ended = True

    @staticmethod
    def _hand_off(st: StreamState, link: RelayLink, what: bytes | OSError | None) -> None:
        link.polled = False
        link.handoff = what
        st.notify()

    # ---- tunnel -> socket: the sink --------------------------------------------------
    def deliver(self, stream_id: int, st: StreamState, data: bytes | memoryview) -> bool:
        """Into the relay's socket right away when nothing is queued before it, else queue
        it (with a backlog task to wait for the socket). True when all of it went in. `data`
        may be a view of the TLS socket's read buffer: what is queued is copied."""
        link = st.link
        # After a failed write the relay is ending with that error: queue, and closing acks.
        if link.error is None and not st.received and not link.backlog:
            try:
                n = self.sink_some(stream_id, st, link, data)
            except OSError as e:
                self._sink_failed(st, link, e)
                st.received.append(bytes(data))
                return False
            if n == len(data):
                return True
            data = data[n:]
        st.received.append(bytes(data))
        if link.error is None:
            self.start_backlog(stream_id, st)
        return False

    def sink_some(self, stream_id: int, st: StreamState, link: RelayLink, data: bytes) -> int:
        """Write what the socket takes now, counted and acknowledged to flow control (the
        window update goes out with the next push); OSError from the socket propagates."""
        try:
            n = link.sock.send(data)
        except BlockingIOError:
            return 0
        st.taken += n
        self._mux.codec.ack(stream_id, n)
        return n

    @staticmethod
    def _sink_failed(st: StreamState, link: RelayLink, e: OSError) -> None:
        link.error = e
        st.interrupt()

    def finish_output(self, st: StreamState) -> None:
        """END_STREAM, all data delivered: half-close the relay's socket."""
        link = st.link
        try:
            sockio.shutdown_write(link.sock)
        except OSError as e:
            self._sink_failed(st, link, e)
            return
        link.out_done = True
        if not link.polled:   # idle in the poller's care, the relay looks at out_done only later
            st.notify()

    def start_backlog(self, stream_id: int, st: StreamState) -> None:
        link = st.link
        if not link.backlog and self.nursery is not None:
            link.backlog = True
            self.backlog_tasks += 1
            self.nursery.start_soon(self._write_backlog, stream_id, st, link)

    async def _write_backlog(self, stream_id: int, st: StreamState, link: RelayLink) -> None:
        """Write a relayed stream's queued bytes into its socket as the socket takes them;
        then the half-close if END_STREAM came. Ends early, quietly, when the relay ends
        (the socket is about to close) or the socket fails (the relay gets the error)."""
        sock, buf = link.sock, st.received
        try:
            while buf and st.link is link and link.error is None:
                await sockio.wait_writable(sock)
                if st.link is not link:
                    return
                chunk = buf[0]
                n = self.sink_some(stream_id, st, link, chunk)
                if n:
                    self._mux.push()   # the window update
                    if n == len(chunk):
                        buf.pop(0)
                    else:
                        buf[0] = chunk[n:]
            if st.recv_ended and not buf and st.link is link and link.error is None:
                self.finish_output(st)
        except trio.ClosedResourceError:
            pass   # notify_closing: the relay is ending and knows why
        except OSError as e:
            if st.link is link:
                self._sink_failed(st, link, e)
        finally:
            link.backlog = False
            st.notify()
