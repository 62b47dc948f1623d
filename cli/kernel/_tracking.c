/*
 * The hot path of cowfs.cli.kernel.namespace.TrackedNamespace, in C.
 *
 * When a cell's globals are a dict subclass, CPython looks every global and builtin name up
 * through the mapping's subscript slot. Written in Python, that slot costs a Python call per
 * lookup (and a Python-level KeyError per builtin), which made loops in notebook code 5 to
 * 10 times slower. Here it costs a set insertion: subscript and assignment record the key in
 * `touched` and then do exactly what dict does. Everything else (get, pop, items, ...) stays
 * in the Python subclass, where speed does not matter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyDictObject dict;
    PyObject *touched; /* a set, or NULL while not tracking */
} TrackedDict;

static int
record(TrackedDict *self, PyObject *key)
{
    if (self->touched == NULL)
        return 0;
    return PySet_Add(self->touched, key);
}

static PyObject *builtins_name; /* "__builtins__", interned */

/* A name the namespace lacks but the builtins have: answered with the builtin, which is
 * what the interpreter would look up next, so that a global lookup of `len` or `range` in
 * notebook code does not raise and catch a KeyError every time. */
static PyObject *
builtin_for(TrackedDict *self, PyObject *key)
{
    PyObject *builtins = PyDict_GetItemWithError((PyObject *)self, builtins_name);
    if (builtins == NULL)
        return NULL;
    if (PyModule_Check(builtins))
        builtins = PyModule_GetDict(builtins);
    if (!PyDict_Check(builtins))
        return NULL;
    return PyDict_GetItemWithError(builtins, key);
}

static PyObject *
tracked_subscript(TrackedDict *self, PyObject *key)
{
    PyObject *value;
    if (record(self, key) < 0)
        return NULL;
    value = PyDict_GetItemWithError((PyObject *)self, key);
    if (value == NULL && !PyErr_Occurred())
        value = builtin_for(self, key);
    if (value != NULL) {
        Py_INCREF(value);
        return value;
    }
    if (!PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, key);
    return NULL;
}

static int
tracked_ass_subscript(TrackedDict *self, PyObject *key, PyObject *value)
{
    if (record(self, key) < 0)
        return -1;
    if (value == NULL)
        return PyDict_DelItem((PyObject *)self, key);
    return PyDict_SetItem((PyObject *)self, key, value);
}

static Py_ssize_t
tracked_length(TrackedDict *self)
{
    return PyDict_Size((PyObject *)self);
}

static int
tracked_traverse(TrackedDict *self, visitproc visit, void *arg)
{
    Py_VISIT(self->touched);
    return PyDict_Type.tp_traverse((PyObject *)self, visit, arg);
}

static int
tracked_clear(TrackedDict *self)
{
    Py_CLEAR(self->touched);
    return PyDict_Type.tp_clear((PyObject *)self);
}

static void
tracked_dealloc(TrackedDict *self)
{
    Py_CLEAR(self->touched);
    PyDict_Type.tp_dealloc((PyObject *)self);
}

static PyMappingMethods tracked_as_mapping = {
    (lenfunc)tracked_length,
    (binaryfunc)tracked_subscript,
    (objobjargproc)tracked_ass_subscript,
};

static PyMemberDef tracked_members[] = {
    {"touched", T_OBJECT, offsetof(TrackedDict, touched), 0, "names looked up, bound or deleted"},
    {NULL},
};

static PyTypeObject TrackedDictType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cowfs.cli.kernel._tracking.TrackedDict",
    .tp_basicsize = sizeof(TrackedDict),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DICT_SUBCLASS,
    .tp_doc = "A dict that records the keys its subscript and assignment see.",
    .tp_as_mapping = &tracked_as_mapping,
    .tp_traverse = (traverseproc)tracked_traverse,
    .tp_clear = (inquiry)tracked_clear,
    .tp_dealloc = (destructor)tracked_dealloc,
    .tp_members = tracked_members,
};

static struct PyModuleDef tracking_module = {
    PyModuleDef_HEAD_INIT, "_tracking", "The C hot path of TrackedNamespace.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__tracking(void)
{
    PyObject *module;
    builtins_name = PyUnicode_InternFromString("__builtins__");
    if (builtins_name == NULL)
        return NULL;
    TrackedDictType.tp_base = &PyDict_Type;
    if (PyType_Ready(&TrackedDictType) < 0)
        return NULL;
    module = PyModule_Create(&tracking_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&TrackedDictType);
    if (PyModule_AddObject(module, "TrackedDict", (PyObject *)&TrackedDictType) < 0) {
        Py_DECREF(&TrackedDictType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
