//! The stored form of a ring's buckets, smaller than postcard's own: a
//! bucket's index as the step from the one before, and each amount as its
//! scale and mantissa in a variable-length integer, not the sixteen fixed
//! bytes of `Decimal::serialize`. A terminal's record (about 3 KB in layout
//! `s5`) is mostly buckets, and Redis's time per event grows with the bytes a
//! record is read and written with (benches/RESULTS.md, issue 23).
//!
//! ```text
//! buckets = varint(n) bucket*
//! bucket  = varint(index step, zigzag) varint(count) amount flag [amount amount amount]
//! amount  = u8 scale, varint(mantissa, zigzag)
//! ```
//! The first step is the index itself. `flag` is 1 when statistics (sum of
//! squares, min, max) follow.

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use super::ring::{Bucket, Stats};

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

fn put_amount(out: &mut Vec<u8>, bytes: [u8; 16]) {
    let d = Decimal::deserialize(bytes);
    // A scale is at most 28: one byte.
    out.push(d.scale() as u8);
    put_varint(out, zigzag(d.mantissa()));
}

/// Reads what [`put_varint`] wrote.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.bytes.get(self.at).ok_or("buckets end early")?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u128, &'static str> {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a bucket number is too long")
    }

    fn amount(&mut self) -> Result<[u8; 16], &'static str> {
        let scale = u32::from(self.byte()?);
        let mantissa = unzigzag(self.varint()?);
        Decimal::try_from_i128_with_scale(mantissa, scale).map(|d| d.serialize()).map_err(|_| "an amount out of range")
    }
}

/// Encodes `buckets` (ascending by index) as the module docs say.
pub(crate) fn encode(buckets: &[Bucket]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + buckets.len() * 8);
    put_varint(&mut out, buckets.len() as u128);
    let mut previous = 0i64;
    for b in buckets {
        put_varint(&mut out, zigzag(i128::from(b.index) - i128::from(previous)));
        previous = b.index;
        put_varint(&mut out, u128::from(b.count));
        put_amount(&mut out, b.sum);
        match &b.stats {
            None => out.push(0),
            Some(st) => {
                out.push(1);
                put_amount(&mut out, st.sum_sq);
                put_amount(&mut out, st.min);
                put_amount(&mut out, st.max);
            }
        }
    }
    out
}

/// Decodes what [`encode`] wrote.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Bucket>, &'static str> {
    let mut r = Reader { bytes, at: 0 };
    let n = usize::try_from(r.varint()?).map_err(|_| "too many buckets")?;
    // Each bucket takes four bytes at least: a length beyond that is corrupt.
    if n > bytes.len() / 4 + 1 {
        return Err("more buckets than bytes");
    }
    let mut out = Vec::with_capacity(n);
    let mut index = 0i128;
    for _ in 0..n {
        index = index.checked_add(unzigzag(r.varint()?)).ok_or("a bucket index out of range")?;
        let index = i64::try_from(index).map_err(|_| "a bucket index out of range")?;
        let count = u32::try_from(r.varint()?).map_err(|_| "a bucket count out of range")?;
        let sum = r.amount()?;
        let stats = match r.byte()? {
            0 => None,
            1 => Some(Stats { sum_sq: r.amount()?, min: r.amount()?, max: r.amount()? }),
            _ => return Err("a bucket flag that is neither 0 nor 1"),
        };
        out.push(Bucket { index, count, sum, stats });
    }
    if r.at != bytes.len() {
        return Err("bytes after the last bucket");
    }
    Ok(out)
}

/// `#[serde(with = "compact")]` for a ring's buckets.
pub(crate) fn serialize<S: Serializer>(buckets: &[Bucket], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(&encode(buckets))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bucket>, D::Error> {
    let bytes: &[u8] = <&[u8]>::deserialize(d)?;
    decode(bytes).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(s: &str) -> [u8; 16] {
        s.parse::<Decimal>().unwrap().serialize()
    }

    #[test]
    fn buckets_read_back_as_written_and_smaller() {
        let buckets = vec![
            Bucket { index: 28_333_333, count: 3, sum: amount("129.97"), stats: None },
            Bucket { index: 28_333_334, count: 1, sum: amount("0.005"), stats: None },
            Bucket {
                index: 28_333_400,
                count: 70_000,
                sum: amount("-79228162514264337593543950335"),
                stats: Some(Stats { sum_sq: amount("1.5"), min: amount("-3"), max: amount("12345678.9012") }),
            },
            Bucket { index: -5, count: 0, sum: amount("0"), stats: None },
        ];
        let bytes = encode(&buckets);
        assert_eq!(decode(&bytes).unwrap(), buckets);
        let fixed = postcard::to_stdvec(&buckets).unwrap();
        assert!(bytes.len() * 2 < fixed.len(), "{} bytes against postcard's {}", bytes.len(), fixed.len());
        assert!(decode(&[]).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        assert!(decode(&[0xff; 40]).is_err());
        // Steps that would overflow the index are refused, not wrapped.
        let mut huge = vec![2];
        for _ in 0..2 {
            huge.extend([0xfe; 18]);
            huge.extend([0x03, 1, 0, 0, 0]);
        }
        assert!(decode(&huge).is_err());
    }
}
