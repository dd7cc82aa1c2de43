//! A small pickle reader for the CIFAR-10 python batches.
//!
//! The batches are pickled dicts `{b'data': ndarray uint8 N×3072, b'labels': [int], ...}`.
//! This module runs a minimal pickle virtual machine over the opcodes such files use, in
//! every way they are commonly written: Python 2 cPickle (the original files: `BINSTRING`
//! payloads), Python 3 protocol 2 (bytes as `_codecs.encode(str, 'latin1')`), protocols 3–4
//! (`BINBYTES`, frames, `STACK_GLOBAL`, `MEMOIZE`) and protocol 5 (numpy's `_frombuffer` with
//! an in-band `BYTEARRAY8`). The only callables it knows are the handful numpy arrays and
//! bytes need; anything else is an error saying so. It never executes arbitrary code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A decoded pickle value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer (fits in i64).
    Int(i64),
    /// A float (parsed for completeness; CIFAR batches hold none).
    #[allow(dead_code)]
    Float(f64),
    /// Bytes (Python 3 `bytes`, Python 2 `str`, or a `bytearray`).
    Bytes(Rc<Vec<u8>>),
    /// Text (Python 3 `str`, Python 2 `unicode`).
    Str(Rc<str>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list (shared and mutable, as in Python).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict, as its items in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A global reference `module.name` not yet called.
    Global(Rc<(String, String)>),
    /// A numpy dtype.
    Dtype(Rc<RefCell<Dtype>>),
    /// A numpy array.
    Array(Rc<RefCell<Array>>),
}

/// A numpy dtype: kind (`u`, `i`, `f`, `b`, …), item size and byte order.
#[derive(Debug, Clone, PartialEq)]
pub struct Dtype {
    /// Type code as pickled, e.g. `u1`, `i8`.
    pub code: String,
    /// `<`, `>`, `|` or `=`.
    pub byteorder: char,
}

/// A numpy array: dtype, shape and raw C-order data.
#[derive(Debug, Clone, Default)]
pub struct Array {
    /// Element type (`None` until the array's state is set).
    pub dtype: Option<Dtype>,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Raw element bytes in C order.
    pub data: Vec<u8>,
}

impl Array {
    /// The array as unsigned bytes, if its dtype is `u1`.
    pub fn as_u8(&self) -> Result<&[u8], String> {
        match &self.dtype {
            Some(d) if d.code == "u1" || d.code == "b1" => Ok(&self.data),
            Some(d) => Err(format!("array dtype is {}, expected uint8", d.code)),
            None => Err("array has no data".into()),
        }
    }

    /// The array's elements as i64, for integer dtypes.
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        let d = self.dtype.as_ref().ok_or("array has no data")?;
        let (kind, size) = d.code.split_at(1);
        let size: usize = size
            .parse()
            .map_err(|_| format!("unsupported dtype {}", d.code))?;
        if !matches!(kind, "u" | "i") || !matches!(size, 1 | 2 | 4 | 8) {
            return Err(format!("array dtype is {}, expected integers", d.code));
        }
        let big = d.byteorder == '>';
        Ok(self
            .data
            .chunks_exact(size)
            .map(|c| {
                let mut b = [0u8; 8];
                if big {
                    b[8 - size..].copy_from_slice(c);
                    b.reverse();
                } else {
                    b[..size].copy_from_slice(c);
                }
                let u = u64::from_le_bytes(b);
                if kind == "i" && size < 8 {
                    let shift = 64 - 8 * size as u32;
                    ((u << shift) as i64) >> shift
                } else {
                    u as i64
                }
            })
            .collect())
    }
}

impl Value {
    /// Short description of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Dtype(_) => "numpy dtype",
            Value::Array(_) => "numpy array",
        }
    }

    /// Text of a `str` or `bytes` value.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// Looks up `key` in a dict, matching `str` or `bytes` keys by their text.
    pub fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        d.borrow()
            .iter()
            .find(|(k, _)| k.as_text().as_deref() == Some(key))
            .map(|(_, v)| v.clone())
    }

    /// Dict keys as text (for error messages).
    pub fn keys(&self) -> Vec<String> {
        let Value::Dict(d) = self else {
            return Vec::new();
        };
        d.borrow()
            .iter()
            .map(|(k, _)| k.as_text().unwrap_or_else(|| k.kind().to_string()))
            .collect()
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
}

/// Opcode names for error messages.
fn opcode_name(op: u8) -> String {
    match op {
        b'S' => "STRING (protocol 0)".into(),
        b'V' => "UNICODE (protocol 0)".into(),
        b'i' => "INST".into(),
        b'o' => "OBJ".into(),
        0x81 => "NEWOBJ".into(),
        0x92 => "NEWOBJ_EX".into(),
        0x82..=0x84 => "EXT".into(),
        b'P' | b'Q' => "PERSID".into(),
        0x90 => "EMPTY_SET".into(),
        0x91 => "FROZENSET".into(),
        0x97 => "NEXT_BUFFER (out-of-band buffers)".into(),
        0x20..=0x7e => format!("'{}'", op as char),
        _ => format!("0x{op:02x}"),
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

/// Parses a pickle and returns the object it holds.
pub fn load(data: &[u8]) -> Result<Value, String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run()
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: needs {n} bytes at offset {} but the data ends at {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn len8(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64()?).map_err(|_| "length does not fit in memory".to_string())
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: unterminated text line")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "text line is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow (popped past a MARK)".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("no MARK on the stack")?;
        Ok(self.stack.split_off(m))
    }

    fn text(bytes: &[u8]) -> Result<Value, String> {
        let s = std::str::from_utf8(bytes).map_err(|_| "unicode string is not valid UTF-8")?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn bytes(bytes: &[u8]) -> Value {
        Value::Bytes(Rc::new(bytes.to_vec()))
    }

    fn memo_get(&self, k: u64) -> Result<Value, String> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| format!("memo key {k} was never stored"))
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .map_err(|_| "truncated: no STOP opcode".to_string())?;
            self.step(op)
                .map_err(|e| format!("pickle opcode {} at offset {at}: {e}", opcode_name(op)))?;
            if op == b'.' {
                if !self.marks.is_empty() {
                    return Err("pickle ends with an unclosed MARK".into());
                }
                return self
                    .stack
                    .pop()
                    .ok_or("pickle ends with an empty stack".into());
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<(), String> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                self.u64()?; // FRAME: a length hint only.
            }
            b'.' => {}
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.stack.push(v);
            }
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'I' => {
                let s = self.line()?;
                let v = match s {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(s.parse().map_err(|_| format!("bad INT `{s}`"))?),
                };
                self.stack.push(v);
            }
            b'L' => {
                let s = self.line()?;
                let v = s
                    .trim_end_matches('L')
                    .parse()
                    .map_err(|_| format!("bad LONG `{s}`"))?;
                self.stack.push(Value::Int(v));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                self.stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.u8()?;
                self.stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
                self.stack.push(Value::Int(v as i64));
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                if n > 8 {
                    return Err(format!("integer of {n} bytes does not fit in 64 bits"));
                }
                let b = self.take(n)?;
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(b);
                self.stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                self.stack.push(Value::Float(v));
            }
            b'F' => {
                let s = self.line()?;
                let v = s.parse().map_err(|_| format!("bad FLOAT `{s}`"))?;
                self.stack.push(Value::Float(v));
            }
            // Byte strings: Python 2 str (BINSTRING, SHORT_BINSTRING), bytes, bytearray.
            b'T' | b'B' => {
                let n = self.u32()? as usize;
                let b = self.take(n)?;
                self.stack.push(Self::bytes(b));
            }
            b'U' | b'C' => {
                let n = self.u8()? as usize;
                let b = self.take(n)?;
                self.stack.push(Self::bytes(b));
            }
            0x8e | 0x96 => {
                let n = self.len8()?;
                let b = self.take(n)?;
                self.stack.push(Self::bytes(b));
            }
            // Unicode strings.
            b'X' => {
                let n = self.u32()? as usize;
                let v = Self::text(self.take(n)?)?;
                self.stack.push(v);
            }
            0x8c => {
                let n = self.u8()? as usize;
                let v = Self::text(self.take(n)?)?;
                self.stack.push(v);
            }
            0x8d => {
                let n = self.len8()?;
                let v = Self::text(self.take(n)?)?;
                self.stack.push(v);
            }
            // Containers.
            b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            b']' => self
                .stack
                .push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'a' => {
                let v = self.pop()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().push(v),
                    other => return Err(format!("APPEND to a {}", other.kind())),
                }
            }
            b'e' => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    other => return Err(format!("APPENDS to a {}", other.kind())),
                }
            }
            b'}' => self
                .stack
                .push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = Self::pairs(items)?;
                self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                Self::dict_insert(self.top()?, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = Self::pairs(items)?;
                Self::dict_insert(self.top()?, pairs)?;
            }
            // Memo.
            b'p' => {
                let k = self.line()?;
                let k = k.parse().map_err(|_| format!("bad PUT key `{k}`"))?;
                let v = self.top()?.clone();
                self.memo.insert(k, v);
            }
            b'q' => {
                let k = self.u8()? as u64;
                let v = self.top()?.clone();
                self.memo.insert(k, v);
            }
            b'r' => {
                let k = self.u32()? as u64;
                let v = self.top()?.clone();
                self.memo.insert(k, v);
            }
            0x94 => {
                let k = self.memo.len() as u64;
                let v = self.top()?.clone();
                self.memo.insert(k, v);
            }
            b'g' => {
                let k = self.line()?;
                let k = k.parse().map_err(|_| format!("bad GET key `{k}`"))?;
                let v = self.memo_get(k)?;
                self.stack.push(v);
            }
            b'h' => {
                let k = self.u8()? as u64;
                let v = self.memo_get(k)?;
                self.stack.push(v);
            }
            b'j' => {
                let k = self.u32()? as u64;
                let v = self.memo_get(k)?;
                self.stack.push(v);
            }
            // Objects.
            b'c' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.stack.push(Value::Global(Rc::new((module, name))));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self
                        .stack
                        .push(Value::Global(Rc::new((m.to_string(), n.to_string())))),
                    (m, n) => {
                        return Err(format!(
                            "STACK_GLOBAL needs two str, got {} and {}",
                            m.kind(),
                            n.kind()
                        ));
                    }
                }
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = reduce(&func, &args)?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                build(self.top()?, &state)?;
            }
            _ => {
                return Err(
                    "unsupported opcode: this reader only understands pickled dicts of numpy \
                     arrays, lists, numbers and strings (as in CIFAR-10 python batches)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of items for a dict".into());
        }
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn dict_insert(target: &mut Value, pairs: Vec<(Value, Value)>) -> Result<(), String> {
        let Value::Dict(d) = target else {
            return Err(format!("SETITEM on a {}", target.kind()));
        };
        let mut d = d.borrow_mut();
        for (k, v) in pairs {
            let key = k.as_text();
            match d
                .iter_mut()
                .find(|(old, _)| key.is_some() && old.as_text() == key)
            {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }
}

fn is_numpy(module: &str, sub: &str) -> bool {
    module == format!("numpy.core.{sub}") || module == format!("numpy._core.{sub}")
}

fn tuple_items(v: &Value, what: &str) -> Result<Rc<Vec<Value>>, String> {
    match v {
        Value::Tuple(t) => Ok(t.clone()),
        other => Err(format!("{what}: expected a tuple, got {}", other.kind())),
    }
}

fn shape_of(v: &Value) -> Result<Vec<usize>, String> {
    tuple_items(v, "array shape")?
        .iter()
        .map(|d| match d.as_int() {
            Some(n) if n >= 0 => Ok(n as usize),
            _ => Err(format!("array shape holds a {}", d.kind())),
        })
        .collect()
}

fn dtype_of(code: &Value) -> Result<Dtype, String> {
    let text = code
        .as_text()
        .ok_or_else(|| format!("dtype code is a {}", code.kind()))?;
    let (byteorder, code) = match text.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, text[1..].to_string()),
        _ => ('=', text),
    };
    Ok(Dtype { code, byteorder })
}

fn set_data(a: &mut Array, data: &Value) -> Result<(), String> {
    let Value::Bytes(b) = data else {
        return Err(format!(
            "array data is a {} (object arrays are not supported)",
            data.kind()
        ));
    };
    let dtype = a.dtype.as_ref().ok_or("array without dtype")?;
    let size: usize = dtype.code[1..]
        .parse()
        .map_err(|_| format!("unsupported dtype `{}`", dtype.code))?;
    let count: usize = a.shape.iter().product();
    if b.len() != count * size {
        return Err(format!(
            "array of shape {:?} and dtype {} needs {} bytes, the pickle holds {}",
            a.shape,
            dtype.code,
            count * size,
            b.len()
        ));
    }
    a.data = b.to_vec();
    Ok(())
}

/// Converts a Fortran-order 2-D array's data to C order.
fn fortran_to_c(a: &mut Array) -> Result<(), String> {
    match a.shape[..] {
        [_] | [] => Ok(()),
        [r, c] => {
            let size = a.data.len() / (r * c).max(1);
            let mut out = vec![0u8; a.data.len()];
            for i in 0..r {
                for j in 0..c {
                    let src = (j * r + i) * size;
                    let dst = (i * c + j) * size;
                    out[dst..dst + size].copy_from_slice(&a.data[src..src + size]);
                }
            }
            a.data = out;
            Ok(())
        }
        _ => Err(format!(
            "Fortran-order array of {} dimensions is not supported",
            a.shape.len()
        )),
    }
}

/// Encodes text whose characters are all below U+0100 as Latin-1 bytes (how Python 3 pickles
/// `bytes` at protocol 2). Works on the UTF-8 bytes directly: such characters are one byte, or
/// two starting with 0xC2 / 0xC3.
fn latin1(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if b.is_ascii() {
        return Ok(b.to_vec());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x80 {
            out.push(c);
            i += 1;
        } else if (c == 0xC2 || c == 0xC3) && i + 1 < b.len() {
            out.push(((c & 0x03) << 6) | (b[i + 1] & 0x3F));
            i += 2;
        } else {
            return Err("_codecs.encode: text has characters outside Latin-1".into());
        }
    }
    Ok(out)
}

/// Applies a pickled callable: only the few numpy and codec functions arrays need.
fn reduce(func: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(g) = func else {
        return Err(format!("REDUCE on a {}, not a callable", func.kind()));
    };
    let (module, name) = (g.0.as_str(), g.1.as_str());
    let args = tuple_items(args, "REDUCE arguments")?;
    match (module, name) {
        ("_codecs", "encode") => {
            let (Some(Value::Str(s)), Some(enc)) = (args.first(), args.get(1)) else {
                return Err("_codecs.encode expects (str, encoding)".into());
            };
            let enc = enc.as_text().unwrap_or_default().to_ascii_lowercase();
            if !matches!(enc.as_str(), "latin1" | "latin-1" | "iso-8859-1") {
                return Err(format!("_codecs.encode with encoding `{enc}`"));
            }
            Ok(Value::Bytes(Rc::new(latin1(s)?)))
        }
        (m, "_reconstruct") if is_numpy(m, "multiarray") => {
            match args.first() {
                Some(Value::Global(c)) if c.0 == "numpy" && c.1 == "ndarray" => {}
                _ => return Err("_reconstruct of something other than numpy.ndarray".into()),
            }
            Ok(Value::Array(Rc::new(RefCell::new(Array::default()))))
        }
        ("numpy", "dtype") => {
            let code = args.first().ok_or("numpy.dtype without arguments")?;
            Ok(Value::Dtype(Rc::new(RefCell::new(dtype_of(code)?))))
        }
        (m, "_frombuffer") if is_numpy(m, "numeric") => {
            let [buf, dtype, shape, order] = &args[..] else {
                return Err("_frombuffer expects (buffer, dtype, shape, order)".into());
            };
            let Value::Dtype(dtype) = dtype else {
                return Err(format!("_frombuffer dtype is a {}", dtype.kind()));
            };
            let mut a = Array {
                dtype: Some(dtype.borrow().clone()),
                shape: shape_of(shape)?,
                data: Vec::new(),
            };
            set_data(&mut a, buf)?;
            if order.as_text().as_deref() == Some("F") {
                fortran_to_c(&mut a)?;
            }
            Ok(Value::Array(Rc::new(RefCell::new(a))))
        }
        _ => Err(format!(
            "refusing to call {module}.{name}: only numpy arrays, lists, numbers and strings \
             are supported"
        )),
    }
}

/// Sets an object's pickled state (BUILD): numpy arrays and dtypes only.
fn build(target: &mut Value, state: &Value) -> Result<(), String> {
    match target {
        Value::Array(a) => {
            let st = tuple_items(state, "array state")?;
            // (version, shape, dtype, is_fortran, data); version is absent in old pickles.
            let st: &[Value] = match st.len() {
                5 => &st[1..],
                4 => &st[..],
                n => return Err(format!("array state has {n} items, expected 4 or 5")),
            };
            let Value::Dtype(dtype) = &st[1] else {
                return Err(format!("array state dtype is a {}", st[1].kind()));
            };
            let mut a = a.borrow_mut();
            a.shape = shape_of(&st[0])?;
            a.dtype = Some(dtype.borrow().clone());
            set_data(&mut a, &st[3])?;
            if st[2].as_int() == Some(1) {
                fortran_to_c(&mut a)?;
            }
            Ok(())
        }
        Value::Dtype(d) => {
            let st = tuple_items(state, "dtype state")?;
            if let Some(order) = st.get(1).and_then(|v| v.as_text())
                && let Some(c @ ('<' | '>' | '|' | '=')) = order.chars().next()
            {
                d.borrow_mut().byteorder = c;
            }
            Ok(())
        }
        other => Err(format!("BUILD on a {}", other.kind())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A Python 2 cPickle stream as the original CIFAR-10 batches are written: SHORT_BINSTRING
    /// keys, GLOBAL numpy.core.multiarray, BINSTRING payload, BININT1 labels.
    pub(crate) fn py2_batch(rows: usize, data: &[u8], labels: &[u8]) -> Vec<u8> {
        let mut p = b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03\
cnumpy\nndarray\nq\x04K\x00\x85q\x05U\x01bq\x06\x87q\x07Rq\x08(K\x01"
            .to_vec();
        p.push(b'M');
        p.extend_from_slice(&(rows as u16).to_le_bytes());
        p.extend_from_slice(b"M\x00\x0c\x86q\tcnumpy\ndtype\nq\nU\x02u1q\x0bK\x00K\x01\x87q\x0cRq\r(K\x03U\x01|q\x0eNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0fb\x89T");
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        p.extend_from_slice(data);
        p.extend_from_slice(b"q\x10tq\x11bU\x06labelsq\x12]q\x13(");
        for &l in labels {
            p.extend_from_slice(&[b'K', l]);
        }
        p.extend_from_slice(b"eU\x0bbatch_labelq\x14U\x15training batch 1 of 5q\x15u.");
        p
    }

    #[test]
    fn reads_python2_style_batch() {
        let data: Vec<u8> = (0..2 * 3072).map(|i| (i % 251) as u8).collect();
        let v = load(&py2_batch(2, &data, &[4, 9])).unwrap();
        let Some(Value::Array(a)) = v.get("data") else {
            panic!("{:?}", v.keys())
        };
        let a = a.borrow();
        assert_eq!(a.shape, vec![2, 3072]);
        assert_eq!(a.as_u8().unwrap(), &data[..]);
        let Some(Value::List(l)) = v.get("labels") else {
            panic!()
        };
        let l: Vec<i64> = l.borrow().iter().map(|x| x.as_int().unwrap()).collect();
        assert_eq!(l, vec![4, 9]);
        assert_eq!(
            v.get("batch_label").unwrap().as_text().unwrap(),
            "training batch 1 of 5"
        );
    }

    #[test]
    fn memo_shares_mutable_objects() {
        // l = []; d = {'a': l, 'b': l}; l.append(5)  — appended after both references exist.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01X\x01\x00\x00\x00bh\x01uh\x01K\x05a0.";
        let v = load(p).unwrap();
        for k in ["a", "b"] {
            let Some(Value::List(l)) = v.get(k) else {
                panic!()
            };
            assert_eq!(l.borrow().len(), 1);
        }
    }

    #[test]
    fn integers_and_arrays_of_ints() {
        // LONG1 -2, BININT -70000, and a '>i2' array [1, -2] through _frombuffer.
        let v = load(b"\x80\x02\x8a\x01\xfe.").unwrap();
        assert_eq!(v.as_int(), Some(-2));
        let v = load(b"J\x90\xee\xfe\xff.").unwrap();
        assert_eq!(v.as_int(), Some(-70000));
        let p = b"\x80\x04\x8c\x12numpy.core.numeric\x8c\x0b_frombuffer\x93(C\x04\x00\x01\xff\xfe\
\x8c\x05numpy\x8c\x05dtype\x93\x8c\x02i2\x89\x88\x87R(K\x03\x8c\x01>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbK\x02\x85\x8c\x01CtR.";
        let Value::Array(a) = load(p).unwrap() else {
            panic!()
        };
        assert_eq!(a.borrow().to_i64().unwrap(), vec![1, -2]);
    }

    #[test]
    fn latin1_round_trips_every_byte() {
        let all: String = (0u8..=255).map(char::from).collect();
        assert_eq!(latin1(&all).unwrap(), (0u8..=255).collect::<Vec<u8>>());
        assert!(latin1("€").is_err());
    }

    #[test]
    fn fortran_order_is_transposed() {
        let mut a = Array {
            dtype: Some(Dtype {
                code: "u1".into(),
                byteorder: '|',
            }),
            shape: vec![2, 3],
            data: vec![1, 4, 2, 5, 3, 6],
        };
        fortran_to_c(&mut a).unwrap();
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn refuses_other_pickles() {
        let e = load(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap_err();
        assert!(e.contains("refusing to call os.system"), "{e}");
        let e = load(b"\x80\x02}q\x00(").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = load(b"\x80\x02\x90.").unwrap_err();
        assert!(e.contains("EMPTY_SET") && e.contains("offset 2"), "{e}");
        let e = load(b"PK\x03\x04").unwrap_err();
        assert!(e.contains("offset 0"), "{e}");
        assert!(load(b"").unwrap_err().contains("no STOP"));
        assert!(load(b"h\x07.").unwrap_err().contains("memo key 7"));
        assert!(load(b"a.").unwrap_err().contains("underflow"));
    }
}
