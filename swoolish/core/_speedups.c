/*
 * swoolish.core._speedups: the two per-message steps of the WebSocket fast path in C.
 *
 * Optional. swoolish.core.frames holds the same two functions in Python and uses these
 * only when this module was built (a C compiler and Python's headers at install time)
 * and SWOOLISH_NO_SPEEDUPS is unset; both are tested against each other on the same
 * inputs (tests/unit/test_frames.py). docs/performance.md says what each path costs.
 *
 * next_frame(data, pos, limit, compressed_ok) reads one client frame of the kinds the
 * fast path takes (RFC 6455 §5.2): final, masked, text or binary without RSV bits (or
 * with RSV1 alone when compressed_ok: RFC 7692 §6), a 7- or 16-bit length, at most
 * `limit` payload bytes; or a final masked ping or pong of at most 125 bytes (§5.5).
 * It returns (end, kind, value) or None for anything else, including a frame the
 * buffer cuts:
 *   kind 1: text, value the decoded str        kind 2: binary, value the bytes
 *   kind 0x41 / 0x42: compressed text / binary, value the (unmasked) deflated bytes
 *   kind 9: ping, value its payload            kind 10: pong, value b""
 *   kind -1: text that is not UTF-8 (§8.1), value the offset of the first bad byte
 *
 * encode_message(data, opcode) is one unmasked, final server frame (§5.2) carrying a
 * str as UTF-8 (TEXT unless opcode says BINARY) or bytes (BINARY); every other case (a
 * str with a lone surrogate, bytes sent as TEXT, a bytearray, a bad opcode...), and so
 * every error about what push() may send, is the Python version's
 * (swoolish.core.frames.py_encode_message).
 *
 * Frame(fd, data, opcode, finish=True) is the message a `message` handler gets, the
 * Python class swoolish.core.frames.PyFrame in C: built once per message, its
 * constructor is a Python call there (about 9% of an echo's Python) and none here.
 *
 * upgrade_head(data, max_fields, max_bytes) reads a WebSocket opening handshake's
 * request head of the plainest kind, the one every client sends, so that the worker
 * need not make a parser and hear its callbacks: `GET`, an origin-form target of
 * RFC 3986 characters, HTTP/1.1 or 1.0, at most `max_fields` fields of a token name and
 * a value of visible ASCII, spaces and tabs, within `max_bytes`, ending in data (RFC 9112
 * §2-§5), with a non-empty `Upgrade` field and `upgrade` among the `Connection` options, as
 * llhttp decides an upgrade. It returns (target, version, fields, by_name, end,
 * keep_alive) (fields as [(name, value)], the value without the spaces and tabs around
 * it, as the worker takes httptools' fields, RFC 9112 §5;
 * by_name {lower-case name: [values]}, as websockets' Headers keeps them; end the
 * offset after the head's blank line; keep_alive as llhttp's should_keep_alive) or None for
 * anything else, left to httptools: a head cut by the read, a body's framing
 * (Content-Length, Transfer-Encoding), Proxy-Connection, any other character. The
 * worker (swoolish.worker.http) checks it against httptools on the same inputs
 * (tests/unit/test_upgrade_head.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define KIND_INVALID_TEXT (-1)
#define KIND_TEXT 1
#define KIND_BINARY 2
#define KIND_PING 9
#define KIND_PONG 10
#define RSV1 0x40

static PyObject *empty_bytes;
static PyObject *py_encode_message; /* the Python version, looked up at its first use */

/* XOR `n` bytes of `src` with the 4-byte `mask` (RFC 6455 §5.3) into `dst`. */
static void
unmask_into(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
            const unsigned char *mask)
{
    Py_ssize_t i = 0;
    uint32_t m32;
    uint64_t m64;
    memcpy(&m32, mask, 4);
    m64 = ((uint64_t)m32 << 32) | m32;
    for (; i + 8 <= n; i += 8) {
        uint64_t chunk;
        memcpy(&chunk, src + i, 8);
        chunk ^= m64;
        memcpy(dst + i, &chunk, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}

static PyObject *
unmasked_bytes(const unsigned char *src, Py_ssize_t n, const unsigned char *mask)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out != NULL) {
        unmask_into((unsigned char *)PyBytes_AS_STRING(out), src, n, mask);
    }
    return out;
}

/* (end, kind, value), stealing the reference to `value`. */
static PyObject *
result(Py_ssize_t end, int kind, PyObject *value)
{
    PyObject *tuple, *end_obj, *kind_obj;
    if (value == NULL) {
        return NULL;
    }
    end_obj = PyLong_FromSsize_t(end);
    kind_obj = PyLong_FromLong(kind);
    tuple = PyTuple_New(3);
    if (end_obj == NULL || kind_obj == NULL || tuple == NULL) {
        Py_XDECREF(end_obj);
        Py_XDECREF(kind_obj);
        Py_XDECREF(tuple);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(tuple, 0, end_obj);
    PyTuple_SET_ITEM(tuple, 1, kind_obj);
    PyTuple_SET_ITEM(tuple, 2, value);
    return tuple;
}

/* A text payload decoded, or (kind -1) the offset where its UTF-8 goes wrong. */
static PyObject *
text_result(Py_ssize_t end, const unsigned char *src, Py_ssize_t n, const unsigned char *mask)
{
    unsigned char small[256];
    unsigned char *plain = small;
    PyObject *text;
    if (n > (Py_ssize_t)sizeof(small)) {
        plain = PyMem_Malloc(n);
        if (plain == NULL) {
            return PyErr_NoMemory();
        }
    }
    unmask_into(plain, src, n, mask);
    text = PyUnicode_DecodeUTF8((const char *)plain, n, "strict");
    if (plain != small) {
        PyMem_Free(plain);
    }
    if (text != NULL) {
        return result(end, KIND_TEXT, text);
    }
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyObject *type, *exc, *tb;
        Py_ssize_t start = 0;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (exc == NULL || PyUnicodeDecodeError_GetStart(exc, &start) < 0) {
            PyErr_Clear();
            start = 0;
        }
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return result(end, KIND_INVALID_TEXT, PyLong_FromSsize_t(start));
    }
    return NULL;
}

static PyObject *
next_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *buf;
    Py_ssize_t n, pos, limit, head, end;
    unsigned char b0, b1;
    int compressed_ok, compressed;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "next_frame(data, pos, limit, compressed_ok)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "next_frame() reads bytes");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    compressed_ok = PyObject_IsTrue(args[3]);
    if (compressed_ok < 0) {
        return NULL;
    }
    buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    n = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || n - pos < 6) {
        Py_RETURN_NONE;
    }
    b0 = buf[pos];
    b1 = buf[pos + 1];
    if ((b0 == 0x89 || b0 == 0x8A) && b1 >= 0x80 && b1 <= 0xFD) {
        /* a final, masked ping or pong of at most 125 bytes */
        end = pos + 6 + (b1 & 0x7F);
        if (end > n) {
            Py_RETURN_NONE;
        }
        if (b0 == 0x8A) {
            Py_INCREF(empty_bytes);
            return result(end, KIND_PONG, empty_bytes);
        }
        return result(end, KIND_PING, unmasked_bytes(buf + pos + 6, end - pos - 6, buf + pos + 2));
    }
    if (b0 == 0x81 || b0 == 0x82) {
        compressed = 0;
    }
    else if ((b0 == 0xC1 || b0 == 0xC2) && compressed_ok) {
        compressed = 1;
    }
    else {
        Py_RETURN_NONE;
    }
    if (b1 < 0x80 || b1 == 0xFF) {
        Py_RETURN_NONE; /* unmasked, or a 64-bit length */
    }
    if (b1 < 0xFE) {
        head = pos + 6;
        end = head + (b1 & 0x7F);
    }
    else {
        if (n - pos < 8) {
            Py_RETURN_NONE;
        }
        head = pos + 8;
        end = head + (((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3]);
    }
    if (end > n || end - head > limit) {
        Py_RETURN_NONE;
    }
    if (compressed) {
        return result(end, (b0 & 0x0F) | RSV1, unmasked_bytes(buf + head, end - head, buf + head - 4));
    }
    if (b0 == 0x82) {
        return result(end, KIND_BINARY, unmasked_bytes(buf + head, end - head, buf + head - 4));
    }
    return text_result(end, buf + head, end - head, buf + head - 4);
}

/* The frame header of an `n`-byte payload into `head`; its length. */
static Py_ssize_t
server_header(unsigned char *head, int opcode, Py_ssize_t n)
{
    head[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        head[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        head[1] = 126;
        head[2] = (unsigned char)(n >> 8);
        head[3] = (unsigned char)n;
        return 4;
    }
    head[1] = 127;
    for (int i = 0; i < 8; i++) {
        head[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    return 10;
}

static PyObject *
framed(int opcode, const char *payload, Py_ssize_t n)
{
    unsigned char head[10];
    Py_ssize_t h = server_header(head, opcode, n);
    PyObject *out = PyBytes_FromStringAndSize(NULL, h + n);
    if (out != NULL) {
        memcpy(PyBytes_AS_STRING(out), head, h);
        memcpy(PyBytes_AS_STRING(out) + h, payload, n);
    }
    return out;
}

/* The Python version (swoolish.core.frames.py_encode_message), for every other case:
 * looked up once (not at import: frames.py imports this module), then kept. */
static PyObject *
python_encode_message(PyObject *data, PyObject *opcode)
{
    if (py_encode_message == NULL) {
        PyObject *frames = PyImport_ImportModule("swoolish.core.frames");
        if (frames == NULL) {
            return NULL;
        }
        py_encode_message = PyObject_GetAttrString(frames, "py_encode_message");
        Py_DECREF(frames);
        if (py_encode_message == NULL) {
            return NULL;
        }
    }
    return PyObject_CallFunctionObjArgs(py_encode_message, data, opcode, NULL);
}

/* A str's frame, its payload UTF-8; NULL without an exception when the str does not
 * encode (a lone surrogate), for the Python version to refuse with its message. */
static PyObject *
framed_text(int opcode, PyObject *text)
{
    PyObject *utf8, *out;
    if (PyUnicode_IS_ASCII(text)) {
        return framed(opcode, (const char *)PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text));
    }
    utf8 = PyUnicode_AsUTF8String(text);
    if (utf8 == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    out = framed(opcode, PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8));
    Py_DECREF(utf8);
    return out;
}

static PyObject *
encode_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *opcode_obj;
    long opcode = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_message(data, opcode)");
        return NULL;
    }
    data = args[0];
    opcode_obj = args[1];
    if (opcode_obj != Py_None) {
        if (!PyLong_CheckExact(opcode_obj)) {
            return python_encode_message(data, opcode_obj);
        }
        opcode = PyLong_AsLong(opcode_obj);
        if (opcode != KIND_TEXT && opcode != KIND_BINARY) {
            PyErr_Clear();
            return python_encode_message(data, opcode_obj);
        }
    }
    if (PyUnicode_CheckExact(data)) {
        PyObject *out = framed_text(opcode ? (int)opcode : KIND_TEXT, data);
        if (out != NULL || PyErr_Occurred()) {
            return out;
        }
    }
    else if (PyBytes_CheckExact(data) && opcode != KIND_TEXT) {
        /* binary: any bytes will do (text must be UTF-8: the Python version checks) */
        return framed(KIND_BINARY, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    }
    /* a str that does not encode, bytes sent as text, a bytearray, ... */
    return python_encode_message(data, opcode_obj);
}

/* ---- Frame ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *fd;
    PyObject *data;
    PyObject *opcode;
    PyObject *finish;
} FrameObject;

static PyTypeObject Frame_Type;

static void
frame_fill(FrameObject *self, PyObject *fd, PyObject *data, PyObject *opcode, PyObject *finish)
{
    Py_INCREF(fd);
    Py_INCREF(data);
    Py_INCREF(opcode);
    Py_INCREF(finish);
    Py_XSETREF(self->fd, fd);
    Py_XSETREF(self->data, data);
    Py_XSETREF(self->opcode, opcode);
    Py_XSETREF(self->finish, finish);
}

/* Frame(fd, data, opcode, finish=True): positional or by keyword, as the Python class. */
static int
frame_init(FrameObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"fd", "data", "opcode", "finish", NULL};
    PyObject *fd, *data, *opcode, *finish = Py_True;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:Frame", names, &fd, &data, &opcode,
                                     &finish)) {
        return -1;
    }
    frame_fill(self, fd, data, opcode, finish);
    return 0;
}

/* The call of every message, Frame(sid, message, opcode): no argument tuple is built. */
static PyObject *
frame_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    FrameObject *self;
    if (kwnames != NULL || nargs < 3 || nargs > 4 || type != (PyObject *)&Frame_Type) {
        /* keywords, a wrong count (frame_init's error) or a subclass: the general way */
        PyObject *tuple = PyTuple_New(nargs), *kwargs = NULL, *out;
        if (tuple == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(tuple, i, args[i]);
        }
        if (kwnames != NULL) {
            kwargs = PyDict_New();
            for (Py_ssize_t i = 0; kwargs != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
                if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                    Py_CLEAR(kwargs);
                }
            }
            if (kwargs == NULL) {
                Py_DECREF(tuple);
                return NULL;
            }
        }
        out = PyType_Type.tp_call(type, tuple, kwargs);
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        return out;
    }
    self = (FrameObject *)Frame_Type.tp_alloc(&Frame_Type, 0);
    if (self == NULL) {
        return NULL;
    }
    frame_fill(self, args[0], args[1], args[2], nargs == 4 ? args[3] : Py_True);
    return (PyObject *)self;
}

static int
frame_traverse(FrameObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fd);
    Py_VISIT(self->data);
    Py_VISIT(self->opcode);
    Py_VISIT(self->finish);
    return 0;
}

static int
frame_clear(FrameObject *self)
{
    Py_CLEAR(self->fd);
    Py_CLEAR(self->data);
    Py_CLEAR(self->opcode);
    Py_CLEAR(self->finish);
    return 0;
}

static void
frame_dealloc(FrameObject *self)
{
    PyObject_GC_UnTrack(self);
    frame_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* As the Python class's: <Frame fd=7 opcode=1 5 bytes> */
static PyObject *
frame_repr(FrameObject *self)
{
    Py_ssize_t n;
    if (self->fd == NULL || self->data == NULL || self->opcode == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a Frame attribute was deleted");
        return NULL;
    }
    n = PyObject_Length(self->data);
    if (n < 0) {
        return NULL;
    }
    return PyUnicode_FromFormat("<Frame fd=%S opcode=%S %zd bytes>", self->fd, self->opcode, n);
}

/* Pickled as swoolish.core.frames.frame_of(fd, data, opcode, finish): a frame of the
 * class the unpickling process uses (a subclass as itself), as the Python class is; a
 * handler may hand its frame to a task worker. */
static PyObject *
frame_reduce(FrameObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *cls, *out;
    if (Py_TYPE(self) == &Frame_Type) {
        PyObject *frames = PyImport_ImportModule("swoolish.core.frames");
        if (frames == NULL) {
            return NULL;
        }
        cls = PyObject_GetAttrString(frames, "frame_of");
        Py_DECREF(frames);
        if (cls == NULL) {
            return NULL;
        }
    }
    else {
        cls = (PyObject *)Py_TYPE(self);
        Py_INCREF(cls);
    }
    out = Py_BuildValue("O(OOOO)", cls, self->fd, self->data, self->opcode, self->finish);
    Py_DECREF(cls);
    return out;
}

static PyMemberDef frame_members[] = {
    {"fd", T_OBJECT_EX, offsetof(FrameObject, fd), 0, "the session id"},
    {"data", T_OBJECT_EX, offsetof(FrameObject, data), 0, "the message: str (text) or bytes"},
    {"opcode", T_OBJECT_EX, offsetof(FrameObject, opcode), 0, "TEXT (1) or BINARY (2)"},
    {"finish", T_OBJECT_EX, offsetof(FrameObject, finish), 0, "always True: whole messages"},
    {NULL},
};

static PyMethodDef frame_methods[] = {
    {"__reduce__", (PyCFunction)frame_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Frame_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "swoolish.Frame", /* the public name (swoolish/__init__.py) */
    .tp_doc = "A complete WebSocket message as ``message`` handlers get it (Swoole's Frame).",
    .tp_basicsize = sizeof(FrameObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)frame_init,
    .tp_vectorcall = frame_vectorcall,
    .tp_dealloc = (destructor)frame_dealloc,
    .tp_traverse = (traverseproc)frame_traverse,
    .tp_clear = (inquiry)frame_clear,
    .tp_repr = (reprfunc)frame_repr,
    .tp_members = frame_members,
    .tp_methods = frame_methods,
};


/* ------------------------------------------------------------------ upgrade_head */

/* Character classes as tables, filled once (init_char_tables): a head's every byte is
 * looked up, and a table is one load where strchr is a scan. */
#define CH_TCHAR 1  /* tchar (RFC 9110 §5.6.2) */
#define CH_TARGET 2 /* an origin-form target's character: unreserved, sub-delims, ":", "@",
                     * "/", "?", "%" (RFC 3986 §2-§3; "#" is not sent) */
#define CH_VALUE 4  /* a field value's: visible ASCII, SP, HTAB (RFC 9110 §5.5, no obs-text) */
static unsigned char char_class[256];

static void
init_char_tables(void)
{
    const char *p;
    int c;
    for (c = 0; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        char_class[c] = (unsigned char)((alnum ? CH_TCHAR | CH_TARGET : 0) |
                                        ((c >= 0x21 && c <= 0x7E) || c == ' ' || c == '\t'
                                             ? CH_VALUE
                                             : 0));
    }
    for (p = "!#$%&'*+-.^_`|~"; *p; p++) {
        char_class[(unsigned char)*p] |= CH_TCHAR;
    }
    for (p = "-._~!$&'()*+,;=:@/?%"; *p; p++) {
        char_class[(unsigned char)*p] |= CH_TARGET;
    }
}

#define is_tchar(c) (char_class[(unsigned char)(c)] & CH_TCHAR)
#define is_target_char(c) (char_class[(unsigned char)(c)] & CH_TARGET)
#define is_value_char(c) (char_class[(unsigned char)(c)] & CH_VALUE)

/* The names and values every client's handshake carries, as str objects made once
 * (init_known_text): a head of them costs no new str for them. A name is matched as
 * spelt (the field list keeps the client's spelling) and, for its by_name key, in any
 * case. */
static const char *const known_names[] = {
    "Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Origin", "User-Agent",
    "Pragma", "Cache-Control", "Accept-Encoding", "Accept-Language", "Cookie",
    "Authorization", NULL,
};
static const char *const known_values[] = {"websocket", "Upgrade", "upgrade", "13", NULL};
#define N_KNOWN_NAMES (sizeof(known_names) / sizeof(known_names[0]) - 1)
#define N_KNOWN_VALUES (sizeof(known_values) / sizeof(known_values[0]) - 1)
static PyObject *known_name_str[N_KNOWN_NAMES];  /* as spelt above */
static PyObject *known_name_key[N_KNOWN_NAMES];  /* in lower case */
static PyObject *known_value_str[N_KNOWN_VALUES];
static PyObject *version_str[2]; /* "1.0", "1.1" */

static int
init_known_text(void)
{
    size_t i, j;
    char low[64];
    for (i = 0; i < N_KNOWN_NAMES; i++) {
        size_t n = strlen(known_names[i]);
        for (j = 0; j < n; j++) {
            char c = known_names[i][j];
            low[j] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
        known_name_str[i] = PyUnicode_InternFromString(known_names[i]);
        known_name_key[i] = PyUnicode_FromStringAndSize(low, (Py_ssize_t)n);
        if (known_name_str[i] == NULL || known_name_key[i] == NULL) {
            return -1;
        }
        PyUnicode_InternInPlace(&known_name_key[i]);
    }
    for (i = 0; i < N_KNOWN_VALUES; i++) {
        known_value_str[i] = PyUnicode_InternFromString(known_values[i]);
        if (known_value_str[i] == NULL) {
            return -1;
        }
    }
    version_str[0] = PyUnicode_InternFromString("1.0");
    version_str[1] = PyUnicode_InternFromString("1.1");
    return version_str[0] == NULL || version_str[1] == NULL ? -1 : 0;
}

/* A new reference to the str of `s` (n Latin-1 bytes): one of `known` (`count` ASCII
 * str) if it is spelt the same, else a new str. */
static PyObject *
text_of(const unsigned char *s, Py_ssize_t n, PyObject *const *known, size_t count)
{
    size_t i;
    for (i = 0; i < count; i++) {
        if (PyUnicode_GET_LENGTH(known[i]) == n &&
            memcmp(PyUnicode_DATA(known[i]), s, (size_t)n) == 0) {
            Py_INCREF(known[i]);
            return known[i];
        }
    }
    return PyUnicode_DecodeLatin1((const char *)s, n, NULL);
}

/* The index of the first byte of `s` (n bytes) from `i` on that is not a space or tab
 * (OWS, RFC 9110 §5.6.3). */
static Py_ssize_t
skip_ows(const unsigned char *s, Py_ssize_t i, Py_ssize_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t')) {
        i++;
    }
    return i;
}

/* `s` (n bytes) equals the lower-case `word`, in any case */
static int
equals_word(const unsigned char *s, Py_ssize_t n, const char *word)
{
    Py_ssize_t i;
    if ((size_t)n != strlen(word)) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c += 'a' - 'A';
        }
        if (c != (unsigned char)word[i]) {
            return 0;
        }
    }
    return 1;
}

#define CONN_CLOSE 1
#define CONN_KEEP_ALIVE 2
#define CONN_UPGRADE 4

/* The options of one Connection value (comma-separated tokens, spaces and tabs around
 * them) as CONN_* flags; -1 for a value that is not such a list. */
static int
connection_options(const unsigned char *v, Py_ssize_t n)
{
    int flags = 0;
    Py_ssize_t i = 0;
    while (i <= n) {
        Py_ssize_t start, end;
        start = i = skip_ows(v, i, n);
        while (i < n && is_tchar(v[i])) {
            i++;
        }
        end = i;
        i = skip_ows(v, i, n);
        if (end == start || (i < n && v[i] != ',')) {
            return -1;
        }
        if (equals_word(v + start, end - start, "upgrade")) {
            flags |= CONN_UPGRADE;
        }
        else if (equals_word(v + start, end - start, "close")) {
            flags |= CONN_CLOSE;
        }
        else if (equals_word(v + start, end - start, "keep-alive")) {
            flags |= CONN_KEEP_ALIVE;
        }
        i++; /* past the comma (or the end) */
    }
    return flags;
}

/* A new reference to the lower-case str of the name `name` (n bytes). */
static PyObject *
lower_name(const unsigned char *name, Py_ssize_t n)
{
    char low[256];
    Py_ssize_t i;
    if (n > (Py_ssize_t)sizeof(low)) {
        PyObject *text = PyUnicode_DecodeLatin1((const char *)name, n, NULL);
        PyObject *key = text == NULL ? NULL : PyObject_CallMethod(text, "lower", NULL);
        Py_XDECREF(text);
        return key;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = name[i];
        low[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    return text_of((const unsigned char *)low, n, known_name_key, N_KNOWN_NAMES);
}

/* Append `value` to by_name[the lower-case name], a new list for a name first seen. */
static int
add_by_name(PyObject *by_name, const unsigned char *name, Py_ssize_t n, PyObject *value)
{
    PyObject *key, *values;
    int status;
    key = lower_name(name, n);
    if (key == NULL) {
        return -1;
    }
    values = PyDict_GetItemWithError(by_name, key);
    if (values != NULL) {
        status = PyList_Append(values, value);
    }
    else if (PyErr_Occurred()) {
        status = -1;
    }
    else {
        values = PyList_New(1);
        if (values == NULL) {
            status = -1;
        }
        else {
            Py_INCREF(value);
            PyList_SET_ITEM(values, 0, value);
            status = PyDict_SetItem(by_name, key, values);
            Py_DECREF(values);
        }
    }
    Py_DECREF(key);
    return status;
}

static PyObject *
upgrade_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *d;
    Py_ssize_t n, pos, target_start, target_end, max_fields, max_bytes;
    int minor, connection = 0, upgrade_field = 0, keep_alive;
    PyObject *fields = NULL, *by_name = NULL, *out = NULL, *target = NULL, *end;

    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "upgrade_head(data: bytes, max_fields, max_bytes)");
        return NULL;
    }
    max_fields = PyLong_AsSsize_t(args[1]);
    max_bytes = PyLong_AsSsize_t(args[2]);
    if ((max_fields == -1 || max_bytes == -1) && PyErr_Occurred()) {
        return NULL;
    }
    d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    n = PyBytes_GET_SIZE(args[0]);
    if (n > max_bytes) {
        n = max_bytes; /* a longer head is the parser's to refuse */
    }
    /* the request line: GET SP origin-form SP HTTP/1.x CRLF */
    if (n < 5 || memcmp(d, "GET /", 5) != 0) {
        Py_RETURN_NONE;
    }
    pos = 4;
    target_start = pos;
    while (pos < n && is_target_char(d[pos])) {
        pos++;
    }
    target_end = pos;
    if (n - pos < 11 || memcmp(d + pos, " HTTP/1.", 8) != 0 ||
        (d[pos + 8] != '0' && d[pos + 8] != '1') || d[pos + 9] != '\r' || d[pos + 10] != '\n') {
        Py_RETURN_NONE;
    }
    minor = d[pos + 8] - '0';
    pos += 11;
    fields = PyList_New(0);
    by_name = PyDict_New();
    if (fields == NULL || by_name == NULL) {
        goto fail;
    }
    /* field lines: token ":" OWS value OWS CRLF, then the blank line */
    for (;;) {
        Py_ssize_t name_start, name_end, value_start, value_end;
        PyObject *name, *value, *pair;
        if (n - pos >= 2 && d[pos] == '\r' && d[pos + 1] == '\n') {
            pos += 2;
            break;
        }
        if (PyList_GET_SIZE(fields) >= max_fields) {
            goto none;
        }
        name_start = pos;
        while (pos < n && is_tchar(d[pos])) {
            pos++;
        }
        name_end = pos;
        if (name_end == name_start || pos >= n || d[pos] != ':') {
            goto none;
        }
        value_start = pos = skip_ows(d, pos + 1, n);
        while (pos < n && is_value_char(d[pos])) {
            pos++;
        }
        value_end = pos;
        if (n - pos < 2 || d[pos] != '\r' || d[pos + 1] != '\n') {
            goto none;
        }
        pos += 2;
        while (value_end > value_start && (d[value_end - 1] == ' ' || d[value_end - 1] == '\t')) {
            value_end--; /* RFC 9112 §5: the OWS after a value is not part of it */
        }
        if (equals_word(d + name_start, name_end - name_start, "content-length") ||
            equals_word(d + name_start, name_end - name_start, "transfer-encoding") ||
            equals_word(d + name_start, name_end - name_start, "proxy-connection")) {
            goto none;
        }
        if (equals_word(d + name_start, name_end - name_start, "connection")) {
            int options = connection_options(d + value_start, value_end - value_start);
            if (options < 0) {
                goto none;
            }
            connection |= options;
        }
        else if (equals_word(d + name_start, name_end - name_start, "upgrade") &&
                 value_end > value_start) {
            upgrade_field = 1; /* an empty Upgrade is none to llhttp */
        }
        name = text_of(d + name_start, name_end - name_start, known_name_str, N_KNOWN_NAMES);
        if (name == NULL) {
            goto fail;
        }
        value = text_of(d + value_start, value_end - value_start, known_value_str,
                        N_KNOWN_VALUES);
        if (value == NULL) {
            Py_DECREF(name);
            goto fail;
        }
        pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        if (PyList_Append(fields, pair) < 0 ||
            add_by_name(by_name, d + name_start, name_end - name_start,
                        PyTuple_GET_ITEM(pair, 1)) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    if (!upgrade_field || !(connection & CONN_UPGRADE)) {
        goto none;
    }
    keep_alive = minor == 1 ? !(connection & CONN_CLOSE) : !!(connection & CONN_KEEP_ALIVE);
    target = PyUnicode_DecodeLatin1((const char *)d + target_start, target_end - target_start,
                                    NULL);
    if (target == NULL) {
        goto fail;
    }
    end = PyLong_FromSsize_t(pos);
    out = end == NULL ? NULL : PyTuple_New(6);
    if (out == NULL) {
        Py_DECREF(target);
        Py_XDECREF(end);
        goto fail;
    }
    Py_INCREF(version_str[minor]);
    PyTuple_SET_ITEM(out, 0, target);
    PyTuple_SET_ITEM(out, 1, version_str[minor]);
    PyTuple_SET_ITEM(out, 2, fields);
    PyTuple_SET_ITEM(out, 3, by_name);
    PyTuple_SET_ITEM(out, 4, end);
    PyTuple_SET_ITEM(out, 5, PyBool_FromLong(keep_alive));
    return out;
none:
    Py_DECREF(fields);
    Py_DECREF(by_name);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(fields);
    Py_XDECREF(by_name);
    return NULL;
}

static PyMethodDef methods[] = {
    {"next_frame", (PyCFunction)(void (*)(void))next_frame, METH_FASTCALL,
     "next_frame(data, pos, limit, compressed_ok) -> (end, kind, value) | None"},
    {"encode_message", (PyCFunction)(void (*)(void))encode_message, METH_FASTCALL,
     "encode_message(data, opcode) -> bytes: one unmasked, final server frame"},
    {"upgrade_head", (PyCFunction)(void (*)(void))upgrade_head, METH_FASTCALL,
     "upgrade_head(data, max_fields, max_bytes) -> (target, version, fields, by_name, end, "
     "keep_alive) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "swoolish.core._speedups",
    "The WebSocket fast path's per-message steps in C (optional; see swoolish.core.frames).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module;
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    init_char_tables();
    if (empty_bytes == NULL || init_known_text() < 0 || PyType_Ready(&Frame_Type) < 0) {
        return NULL;
    }
    module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&Frame_Type);
    if (PyModule_AddObject(module, "Frame", (PyObject *)&Frame_Type) < 0) {
        Py_DECREF(&Frame_Type);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
