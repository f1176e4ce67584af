"""CPU decoding with PyAV that decodes only what the requested frames need, and numbers frames
the way a full sequential decode does.

Frame ``i`` of a video is the ``i``-th frame, in presentation order, of a decode of the whole
stream from its start (the numbering DALI uses too), turned upright by the container's display
rotation. Every shortcut below is checked against that definition and falls back to decoding
from the start when it cannot be trusted; nothing loops: every pass moves forward through the
stream and ends.

* Indexing: one demux pass (no decoding) reads every packet of the video stream: frame count,
  presentation timestamps (pts), keyframes. The packets of files up to
  :data:`PACKET_CACHE_BYTES` are kept, so that decoding needs neither a seek nor a second demux.
* Reading: each wanted frame needs the packets from the last keyframe before it (in decode
  order, and not after it in presentation order) up to its own packet. Runs of needed packets
  are decoded one after the other, the decoder flushed in between. Packets of frames that are
  neither wanted nor referenced are not decoded: H.264 (``nal_ref_idc == 0``) and HEVC
  (sub-layer non-reference NAL types in the highest temporal layer) packets are not even sent to
  the decoder; other codecs get FFmpeg's ``skip_frame="NONREF"``. Decoded frames are identified
  by their pts; a wanted frame that does not come out, or a frame whose pts is not in the index,
  sends the read to a plain decode from the start, numbering frames as they come out.
* Without reliable timestamps (raw ``.h264``/``.hevc`` streams, missing or repeated pts) frames
  are numbered as a decode from the start gives them.
* Big files whose packets are not kept seek once per run of needed packets (to the keyframe the
  run starts at); packets before that keyframe are skipped, a seek that lands past it falls back
  to decoding from the start.
* Only the needed frames are converted to RGB (with bilinear chroma, like DALI).

Anything wrong with a file (missing, not a regular file, empty, unreadable, no video stream, no
frames, heavily truncated, undecodable) raises :class:`~vita_clip.data.errors.VideoDataError`
naming the file. A file that ends early against its header but still has most of its frames is
used as it is (its frame count is what is there), with a warning naming it and a note in
:attr:`VideoReader.notes`.
"""
from __future__ import annotations

import functools
import logging
import os
import stat
import threading
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from .errors import VideoDataError

logger = logging.getLogger(__name__)

# RGB conversion with bilinear chroma upsampling ("full chroma interpolation", accurate
# rounding, bit-exact): what DALI's decoders do, so that the two backends agree to +-1 level.
# FFmpeg's default fast path repeats chroma samples: up to 50 levels apart on colour edges.
RGB_CONVERSION = (Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
                  | Interpolation.BITEXACT)

# A stream whose packets cover less than this fraction of what the header declares was cut
# short (interrupted download or copy): an error. Cut less than that, it is used with a note.
TRUNCATION_FRACTION = 0.75
# Packets of files up to this size stay in memory between the index pass and decoding (a 10 s
# Kinetics clip is about 1 MB); bigger files are read again, seeking.
PACKET_CACHE_BYTES = 64 << 20
# Codecs whose decoders skip non-reference frames exactly when asked (skip_frame="NONREF").
NONREF_SKIPPING_CODECS = frozenset({"vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4", "h263", "flv1", "msmpeg4v3"})
H264_PARAMETER_SETS = frozenset({7, 8, 13, 15})   # SPS, PPS, SPS extension, subset SPS
HEVC_PARAMETER_SETS = frozenset({32, 33, 34})     # VPS, SPS, PPS
HEVC_SUBLAYER_NONREF = frozenset({0, 2, 4, 6, 8, 10, 12, 14})  # TRAIL_N ... RSV_VCL_N14


@dataclass(frozen=True)
class VideoIndex:
    """What a demux pass learns about a video stream.

    ``width``/``height`` are the coded size (frames rotated by the container's display matrix
    come out with the two swapped). ``frame_pts`` are the presentation timestamps in display
    order and ``keyframe_pts`` those of the keyframes (``None`` when the timestamps cannot
    identify frames: missing or repeated; then frames are numbered by decoding from the start).
    """

    name: str
    codec: str
    width: int
    height: int
    num_frames: int
    frame_pts: np.ndarray | None
    keyframe_pts: np.ndarray | None


class _Unreliable(Exception):
    """The timestamps or a seek cannot be trusted for this read: decode from the start."""


def _describe(error: BaseException) -> str:
    if isinstance(error, av.error.FFmpegError):
        return f"FFmpeg: {error.strerror or error}"
    return f"{type(error).__name__}: {error}"


_reformatters = threading.local()


def _reformatter() -> VideoReformatter:
    # One reformatter per thread and process keeps FFmpeg's conversion context between frames
    # and videos (frame.to_ndarray() builds a new one every time: 1.2 of its 1.5 ms per
    # 340x256 frame). A context inherited by a forked DataLoader worker is not reused.
    cached = getattr(_reformatters, "rgb", None)
    if cached is None or cached[0] != os.getpid():
        cached = _reformatters.rgb = (os.getpid(), VideoReformatter())
    return cached[1]


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded frame, converted like DALI converts it (stored channel by
    channel: a transposed view of a (3, H, W) array).

    The result is swscale's ``rgb24`` conversion with :data:`RGB_CONVERSION`, bit for bit. Its
    planar twin ``gbrp`` (same flags, vectorised) gives the same values, and with the copy of its
    planes takes a third of the time (side by side, 340x256 frames: 0.27 against 0.81 ms on a
    loaded machine; interleaving the planes would cost more than that, hence the channel-planar
    storage); except where the chroma is subsampled vertically and the height is odd: there the
    two round the chroma filter differently (1 level on ~0.1 % of the pixels) and rgb24 is used.
    tests/data/test_data_decode.py checks the equality on random frames of many formats and sizes.
    """
    # One scaling thread: a context inherited by a forked DataLoader worker must not own a
    # thread pool, and the workers already use the cores.
    reformatter = _reformatter()
    if frame.height % 2 and frame.format.chroma_height(frame.height) != frame.height:
        return reformatter.reformat(frame, format="rgb24", interpolation=RGB_CONVERSION, threads=1).to_ndarray()
    planar = reformatter.reformat(frame, format="gbrp", interpolation=RGB_CONVERSION, threads=1)
    height, width = planar.height, planar.width
    green, blue, red = (np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width] for plane in planar.planes)
    return np.stack([red, green, blue]).transpose(1, 2, 0)


def check_video_file(path: str | os.PathLike) -> None:
    """Raise :class:`VideoDataError` if ``path`` is missing, not a regular file, empty or unreadable."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoDataError(str(path), "file not found") from None
    except OSError as e:
        raise VideoDataError(str(path), f"cannot access the file ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoDataError(str(path), "is a directory, expected a video file")
    if not stat.S_ISREG(info.st_mode):  # a pipe or device would block or never end
        raise VideoDataError(str(path), "is not a regular file (a pipe, socket or device), expected a video file")
    if info.st_size == 0:
        raise VideoDataError(str(path), "empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise VideoDataError(str(path), f"cannot open the file ({e.strerror or e})") from None


class _NalParser:
    """Whether an H.264/HEVC packet holds only a non-reference picture, from its NAL headers."""

    def __init__(self, codec: str, extradata: bytes | None):
        self.hevc = codec == "hevc"
        self.max_temporal_id = 0
        # avcC / hvcC extradata (MP4, MKV, FLV): length-prefixed NAL units; else Annex-B start codes
        self.length_size = None
        if extradata and extradata[0] == 1:
            at = 21 if self.hevc else 4
            if len(extradata) > at:
                self.length_size = (extradata[at] & 3) + 1

    def headers(self, data: bytes) -> list[tuple[int, int]] | None:
        """(nal type, nal_ref_idc for H.264 / temporal id for HEVC) of each NAL unit in ``data``,
        or ``None`` when the packet does not parse as NAL units."""
        if self.length_size is not None:  # length prefixes must tile the packet exactly
            units, at, size = [], 0, self.length_size
            while at + size < len(data):
                length = int.from_bytes(data[at:at + size], "big")
                if length == 0 or at + size + length > len(data):
                    break
                units.append(self._header(data, at + size))
                at += size + length
            if at == len(data) and units:
                return units
        # Annex-B (MPEG-TS, raw streams): NAL units after 00 00 01 start codes
        if not data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            return None
        units, at = [], data.find(b"\x00\x00\x01")
        while 0 <= at < len(data) - 4:
            units.append(self._header(data, at + 3))
            at = data.find(b"\x00\x00\x01", at + 3)
        return units or None

    def _header(self, data: bytes, at: int) -> tuple[int, int]:
        if data[at] & 0x80:  # forbidden_zero_bit: not a NAL unit header
            return -1, 0
        if self.hevc:
            return (data[at] >> 1) & 63, (data[at + 1] & 7) - 1 if at + 1 < len(data) else -1
        return data[at] & 31, (data[at] >> 5) & 3

    def is_disposable(self, data: bytes) -> bool:
        """True only for a packet that surely holds nothing but a non-reference picture (and SEI
        or delimiters): no parameter set, no reference slice, nothing unknown."""
        size = self.length_size
        if size is not None and not self.hevc and len(data) > size and int.from_bytes(data[:size], "big") == len(data) - size:
            header = data[size]  # one H.264 NAL unit (most MP4/MKV packets): a non-reference slice?
            return header & 0xE0 == 0 and header & 31 in (1, 5)
        units = self.headers(data)
        if not units:
            return False
        pictures = 0
        for kind, extra in units:
            if self.hevc:
                if kind in HEVC_SUBLAYER_NONREF and extra == self.max_temporal_id:
                    pictures += 1
                elif kind not in (35, 36, 37, 38, 39, 40):  # AUD, EOS, EOB, FD, SEI
                    return False
            elif kind in (1, 5) and extra == 0:
                pictures += 1
            elif kind not in (6, 9, 10, 11, 12):  # SEI, AUD, end of sequence/stream, filler
                return False
        return pictures > 0


class VideoReader:
    """An open video file (or file-like object) with its :class:`VideoIndex`.

    Args:
        source: a path, or a binary file-like object (then give ``name`` for messages).
        name: what error messages call the video (default: the path).
        threads: FFmpeg decoding threads. 1 (default) suits DataLoader workers, which already
            decode one video per core.

    ``notes``: what is odd about the file but did not stop it being used (a file that ends
    early against its header); each note is also logged as a warning naming the file.
    """

    def __init__(self, source, name: str | None = None, threads: int = 1):
        self.name = str(name if name is not None else source)
        self.threads = threads
        self.notes: list[str] = []
        self._source = source
        self._container = self._open(source)
        try:
            self._stream = self._video_stream(self._container)
            self.index = self._build_index()
        except BaseException:
            self._container.close()
            raise

    # -- opening and indexing

    def _open(self, source):
        if isinstance(source, (str, os.PathLike)):
            check_video_file(source)
        elif hasattr(source, "seek"):
            source.seek(0)
        try:
            return av.open(source, mode="r")
        except (av.error.FFmpegError, OSError, EOFError, ValueError) as e:
            raise VideoDataError(self.name, f"not a readable video container ({_describe(e)}); "
                                 "the file may be truncated or not a video") from None

    def _video_stream(self, container):
        streams = container.streams
        if not streams.video:
            kinds = ", ".join(s.type for s in streams) or "none"
            raise VideoDataError(self.name, f"no video stream (streams found: {kinds})")
        stream = streams.video[0]
        if self.threads > 1:
            stream.thread_type = "AUTO"
            stream.thread_count = self.threads
        else:
            stream.thread_count = 1
        return stream

    def _note(self, text: str) -> None:
        self.notes.append(text)
        logger.warning("%s: %s", self.name, text)

    def _build_index(self) -> VideoIndex:
        packets, pts, dts, keyframe, cached_bytes, read_error = [], [], [], [], 0, None
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packets is None and packet.is_corrupt:
                    read_error = "a packet is incomplete"
                    break
                pts.append(packet.pts)
                dts.append(packet.dts)
                keyframe.append(packet.is_keyframe)
                cached_bytes += packet.size
                if packets is not None:
                    packets.append(packet)
                    if cached_bytes > PACKET_CACHE_BYTES:
                        packets = None
        except (av.error.FFmpegError, OSError) as e:
            read_error = _describe(e)
        while packets and keyframe and packets[-1].is_corrupt:  # a file cut inside its last packet
            packets.pop(), pts.pop(), dts.pop(), keyframe.pop()
            read_error = read_error or "the last packet is incomplete"
        # A stream cut mid-GOP starts with packets a decode from the start drops too.
        self._leading = keyframe.index(True) if True in keyframe else 0
        if packets is not None:
            packets = packets[self._leading:]
        pts, dts, keyframe = pts[self._leading:], dts[self._leading:], keyframe[self._leading:]
        if not pts:
            if read_error:
                raise VideoDataError(self.name, f"cannot read the video packets ({read_error}); "
                                     "the file is probably truncated or corrupt")
            raise VideoDataError(self.name, "the video stream has no frames")
        self._packets, self._pts, self._dts = packets, pts, dts
        self._keyframe = np.asarray(keyframe, dtype=bool)
        self._check_length(pts, read_error)

        # Display order from the timestamps, if they identify every frame and keyframes are marked.
        self._order = None  # display index -> decode position
        frame_pts = keyframe_pts = None
        if all(p is not None for p in pts) and len(set(pts)) == len(pts) and keyframe[0]:
            pts_array = np.asarray(pts, dtype=np.int64)
            self._order = np.argsort(pts_array, kind="stable")
            frame_pts = pts_array[self._order]
            keyframe_pts = np.sort(pts_array[self._keyframe])
        ctx = self._stream.codec_context
        self._nal = None
        if ctx.name == "h264" or (ctx.name == "hevc" and packets is not None):
            self._nal = _NalParser(ctx.name, bytes(ctx.extradata) if ctx.extradata else None)
            if ctx.name == "hevc":  # its _N pictures are unreferenced only in the highest sub-layer
                self._nal.max_temporal_id = max((t for p in packets for kind, t in self._nal.headers(bytes(p)) or ()
                                                 if 0 <= kind < 32), default=0)
        return VideoIndex(name=self.name, codec=ctx.name, width=ctx.width, height=ctx.height,
                          num_frames=len(pts), frame_pts=frame_pts, keyframe_pts=keyframe_pts)

    def _check_length(self, pts: list, read_error: str | None) -> None:
        """Error for a file cut far short of its header, a note for one cut a little."""
        stream, count = self._stream, len(pts)
        declared_frames = stream.frames or 0
        known = [p for p in pts if p is not None]
        declared = covered = None
        if known and stream.time_base:
            step = float(stream.time_base) * max(float(np.median(np.diff(sorted(known)))) if len(known) > 1 else 0, 0)
            covered = float((max(known) - min(known)) * stream.time_base) + step
            if stream.duration:
                declared = float(stream.duration * stream.time_base)
            elif self._container.duration and len(self._container.streams) == 1:
                declared = self._container.duration / av.time_base
            if declared is not None and covered >= declared - 2 * step - 0.01 * declared:
                declared = None  # whole, up to a frame or two of rounding
        short_frames = declared_frames > count
        if declared is not None and covered < TRUNCATION_FRACTION * declared:
            raise VideoDataError(self.name, f"truncated: the container declares {declared:.2f} s "
                                 f"but the video stream ends after {covered:.2f} s")
        if short_frames and count < TRUNCATION_FRACTION * declared_frames:
            raise VideoDataError(self.name, f"truncated: the container declares {declared_frames} frames "
                                 f"but only {count} are in the file")
        if short_frames or declared is not None or read_error:
            what = (f"{declared_frames} frames" if short_frames else f"{declared:.2f} s" if declared is not None
                    else "more data")
            self._note(f"the file ends early against its header (truncated?): it declares {what} but has "
                       f"{count} frames" + (f" ({covered:.2f} s)" if covered is not None else "")
                       + (f"; reading stopped with {read_error}" if read_error else "")
                       + "; only those frames are used")

    @property
    def num_frames(self) -> int:
        return self.index.num_frames

    # -- decoding

    def read(self, indices) -> np.ndarray:
        """RGB frames at ``indices`` (any order, repeats allowed): uint8 ``(len(indices), H, W, 3)``,
        stored channels-first (a transposed view of ``(len(indices), 3, H, W)``): the layout the
        transforms permute to comes without a copy, and interleaving the channels costs more than
        converting them."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.name}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        wanted = sorted(set(indices))
        ctx = self._stream.codec_context
        try:
            found = None
            if self._order is not None:
                try:
                    found = self._read_by_timestamp(wanted)
                except _Unreliable:
                    found = None
            if found is None:
                found = self._read_sequential(wanted)
        except (av.error.FFmpegError, OSError) as e:
            raise VideoDataError(self.name, f"decoding failed ({_describe(e)}); the file is probably "
                                 "truncated or corrupt") from None
        finally:
            ctx.skip_frame = "DEFAULT"
        missing = [i for i in wanted if i not in found]
        if missing:
            raise VideoDataError(self.name, f"the container lists {self.num_frames} frames but frames "
                                 f"{missing[:5]} could not be decoded (truncated or corrupt stream)")
        try:
            # stacked channels-first (contiguous copies of the planes), returned as (N, H, W, 3)
            return np.stack([found[i].transpose(2, 0, 1) for i in indices]).transpose(0, 2, 3, 1)
        except ValueError:
            raise VideoDataError(self.name, "the frame size changes inside the video") from None

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = frame_to_rgb(frame)
        turns = self.display_turns(frame)
        return np.rot90(rgb, turns) if turns else rgb

    def display_turns(self, frame: av.VideoFrame) -> int:
        """Quarter turns (counter-clockwise, as ``np.rot90``) that show ``frame`` of this video upright."""
        return round(frame.rotation / 90) % 4 if frame.rotation else self._rotate_tag_turns

    @functools.cached_property
    def _rotate_tag_turns(self) -> int:
        """Quarter turns (counter-clockwise) of an old-style ``rotate`` tag (degrees clockwise)."""
        try:
            return round(-float(self._stream.metadata.get("rotate", 0)) / 90) % 4
        except ValueError:
            return 0

    def _plan(self, wanted: list[int]) -> list[tuple[int, int]]:
        """Runs ``(first, last)`` of decode positions whose packets the wanted frames need."""
        pts, keyframe = self._pts, self._keyframe
        key_positions = np.flatnonzero(keyframe)
        needs = []  # (first, last) decode positions each wanted frame needs
        for position in (int(self._order[i]) for i in wanted):
            # the last keyframe before it in decode order that does not follow it in display
            # order (pictures shown before an open-GOP keyframe refer to the GOP before it)
            k = int(np.searchsorted(key_positions, position, side="right")) - 1
            while k > 0 and pts[key_positions[k]] > pts[position]:
                k -= 1
            needs.append((int(key_positions[k]), position))
        runs: list[list[int]] = []
        for first, last in sorted(needs):
            if runs and first <= runs[-1][1] + 1:
                runs[-1][1] = max(runs[-1][1], last)
            else:
                runs.append([first, last])
        return [(a, b) for a, b in runs]

    def _read_by_timestamp(self, wanted: list[int]) -> dict[int, np.ndarray]:
        ctx = self._stream.codec_context
        index_of_pts = {int(p): i for i, p in enumerate(self.index.frame_pts)}
        wanted_pts = {int(self.index.frame_pts[i]) for i in wanted}
        skip_nonref = ctx.name in NONREF_SKIPPING_CODECS
        found: dict[int, np.ndarray] = {}
        for first, last in self._plan(wanted):
            ctx.flush_buffers()
            latest = None

            def take(frames):
                nonlocal latest
                for frame in frames:
                    index = index_of_pts.get(frame.pts)
                    if index is None or (latest is not None and frame.pts <= latest):
                        raise _Unreliable  # a frame the index does not know, or out of order
                    latest = frame.pts
                    if frame.pts in wanted_pts and index not in found:
                        found[index] = self._convert(frame)

            for packet in self._packets_between(first, last):
                needed = packet.pts in wanted_pts
                if not needed and self._nal is not None and self._nal.is_disposable(bytes(packet)):
                    continue  # a non-reference picture nobody asked for: not even parsed
                if skip_nonref:
                    ctx.skip_frame = "DEFAULT" if needed else "NONREF"
                take(ctx.decode(packet))
            take(ctx.decode(None))  # drain: the last wanted frame may still be in the reorder buffer
        if any(i not in found for i in wanted):
            raise _Unreliable  # e.g. a frame the decoder drops when started at that keyframe
        return found

    def _packets_between(self, first: int, last: int):
        """The packets at decode positions ``first..last``, from memory or by seeking once."""
        if self._packets is not None:
            for position in range(first, last + 1):
                yield self._packets[position]
            return
        target = self._pts[first] if self._dts[first] is None else self._dts[first]
        self._container.seek(target, backward=True, any_frame=False, stream=self._stream)
        position = None
        for packet in self._container.demux(self._stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if position is None:  # find where the seek landed: at or before `first`
                if packet.pts == self._pts[first] and packet.dts == self._dts[first]:
                    position = first
                elif packet.pts in self._pts[first + 1:last + 1]:
                    raise _Unreliable  # landed past the keyframe
                else:
                    continue
            elif packet.pts != self._pts[position] or packet.dts != self._dts[position]:
                raise _Unreliable  # the packets differ from the index
            yield packet
            if position == last:
                return
            position += 1
        raise _Unreliable  # the stream ended before the run did

    def _read_sequential(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode from the start, every packet, numbering frames as they come out."""
        wanted_set, last = set(wanted), max(wanted)
        found: dict[int, np.ndarray] = {}
        number = 0
        ctx = self._stream.codec_context
        ctx.skip_frame = "DEFAULT"
        ctx.flush_buffers()

        def take(frames) -> bool:
            nonlocal number
            for frame in frames:
                if number in wanted_set:
                    found[number] = self._convert(frame)
                number += 1
            return number > last

        for packet in self._all_packets():
            if take(ctx.decode(packet)):
                return found
        take(ctx.decode(None))
        return found

    def _all_packets(self):
        """The index's packets again, in decode order, from the first keyframe."""
        if self._packets is not None:
            yield from self._packets
            return
        # Reopen rather than seek to the start: seeks by timestamp land one GOP late in MPEG-TS.
        self._container.close()
        self._container = self._open(self._source)
        self._stream = self._video_stream(self._container)
        position = 0
        for packet in self._container.demux(self._stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if position >= self._leading:
                yield packet
            position += 1

    # -- lifetime

    def close(self) -> None:
        self._packets = None
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_frames(path: str | os.PathLike, indices, threads: int = 1) -> np.ndarray:
    """Open, decode the frames at ``indices`` (uint8 ``(N, H, W, 3)``), close."""
    with VideoReader(path, threads=threads) as reader:
        return reader.read(indices)
