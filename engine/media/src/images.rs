//! Image dimensions and thumbnails, PNG and JPEG, with decoding bounded: an image wider or taller
//! than [`IMAGE_SIDE_MAX`] pixels, or one whose decoding would allocate more than
//! [`DECODE_BYTES_MAX`], is refused before its pixels are decoded. A decompression bomb (a small
//! file declaring a huge image) and a malformed file are errors, never a crash or an exhausted
//! machine; the upload itself stands, without dimensions or thumbnail.

use std::io::{BufReader, Cursor, Read, Seek};

/// Widest or tallest image measured or thumbnailed, in pixels.
pub const IMAGE_SIDE_MAX: u32 = 10_000;
/// Most memory one decoding may allocate, in bytes (a 10,000 × 10,000 RGBA image is 400 MB: the
/// sides alone do not bound it).
pub const DECODE_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// The longer side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

fn reader<R: Read + Seek>(r: R) -> Result<image::io::Reader<BufReader<R>>, String> {
    let mut reader = image::io::Reader::new(BufReader::new(r)).with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(IMAGE_SIDE_MAX);
    limits.max_image_height = Some(IMAGE_SIDE_MAX);
    limits.max_alloc = Some(DECODE_BYTES_MAX);
    reader.limits(limits);
    Ok(reader)
}

/// Width and height from the image's header (no pixels decoded), within the bounds.
pub fn dimensions<R: Read + Seek>(r: R) -> Result<(u32, u32), String> {
    let (w, h) = reader(r)?.into_dimensions().map_err(|e| e.to_string())?;
    if w > IMAGE_SIDE_MAX || h > IMAGE_SIDE_MAX {
        return Err(format!("{w} × {h} pixels is over the {IMAGE_SIDE_MAX}-pixel bound"));
    }
    Ok((w, h))
}

/// A JPEG of the image fitted in [`THUMBNAIL_SIDE`] pixels (never enlarged).
pub fn thumbnail<R: Read + Seek>(r: R) -> Result<Vec<u8>, String> {
    let img = reader(r)?.decode().map_err(|e| e.to_string())?;
    let small =
        if img.width() > THUMBNAIL_SIDE || img.height() > THUMBNAIL_SIDE { img.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE) } else { img };
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(small.to_rgb8()).write_to(&mut out, image::ImageOutputFormat::Jpeg(80)).map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255]));
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgba8(img).write_to(&mut out, image::ImageOutputFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn dimensions_and_a_thumbnail_that_fits() {
        let bytes = png(800, 400);
        assert_eq!(dimensions(Cursor::new(&bytes)), Ok((800, 400)));
        let thumb = thumbnail(Cursor::new(&bytes)).unwrap();
        assert_eq!(dimensions(Cursor::new(&thumb)), Ok((256, 128)), "the longer side fitted, the ratio kept");
        let small = thumbnail(Cursor::new(png(10, 20))).unwrap();
        assert_eq!(dimensions(Cursor::new(&small)), Ok((10, 20)), "never enlarged");
    }

    /// A PNG header declaring 100,000 × 100,000 pixels (what a decompression bomb does) over a
    /// few bytes: refused from the header, nothing allocated for its pixels.
    #[test]
    fn a_bomb_and_garbage_are_errors() {
        let mut bomb = png(1, 1);
        // IHDR's width and height are the 8 bytes after "IHDR" (the CRC is then wrong, which the
        // decoder may report instead: either way, an error).
        let at = bomb.windows(4).position(|w| w == b"IHDR").unwrap() + 4;
        bomb[at..at + 4].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[at + 4..at + 8].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(dimensions(Cursor::new(&bomb)).is_err());
        assert!(thumbnail(Cursor::new(&bomb)).is_err());
        assert!(thumbnail(Cursor::new(b"definitely not an image".to_vec())).is_err());
        let mut cut = png(300, 300);
        cut.truncate(cut.len() / 2);
        assert!(thumbnail(Cursor::new(&cut)).is_err(), "half a file");
    }
}
