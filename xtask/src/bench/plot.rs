//! What the benches' two plots share: an SVG drawn with plotters into a
//! String, on white, a title on top and a legend of coloured squares under
//! the chart. No font library: the SVG backend writes text as `<text>` for
//! the viewer to set, and plotters sizes it by its built-in estimate.

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// The area a chart is drawn on, and what drawing on it returns.
pub type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
pub type Drawn = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Font sizes as plotters takes them: its SVG backend writes `size / 1.24`
/// as the CSS size, so these come out as 11 px and 14 px.
pub const TEXT: f64 = 13.64;
pub const TITLE: f64 = 17.36;
/// The height of one legend line, and the space above the legend, in px.
const LEGEND_LINE: u32 = 14;
const LEGEND_GAP: u32 = 8;

/// A colour from its `0xrrggbb`.
pub const fn rgb(hex: u32) -> RGBColor {
    RGBColor((hex >> 16) as u8, (hex >> 8) as u8, hex as u8)
}

/// Where the legend goes: its entries fill `columns` columns
/// `column_width` px apart, the first at `left` px (under the chart's
/// y axis, so it lines up with the plot).
pub struct LegendLayout {
    pub left: i32,
    pub columns: usize,
    pub column_width: i32,
}

/// An SVG `width` px wide: the title, then what `chart` draws on an area
/// `chart_height` px high, then the legend. Drawing into a String does not
/// fail, bar a chart too small for its labels; then the error is printed
/// and the SVG holds what was drawn, so a bench's measurements still go out.
pub fn svg(
    width: u32,
    chart_height: u32,
    title: &str,
    legend: &[(RGBColor, &str)],
    layout: &LegendLayout,
    chart: impl FnOnce(&Area) -> Drawn,
) -> String {
    let title_font = ("sans-serif", TITLE).into_font().style(FontStyle::Bold);
    // The title's line as DrawingArea::titled lays it out.
    let title_h = title_font
        .box_size(title)
        .map_or(24, |(_, h)| h + 2 * (h / 2).min(5));
    let lines = legend.len().div_ceil(layout.columns.max(1)) as u32;
    let height = title_h + chart_height + LEGEND_GAP + lines * LEGEND_LINE;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (width, height)).into_drawing_area();
        let drawn = (|| {
            root.fill(&WHITE)?;
            let (plot, key) = root
                .titled(title, title_font)?
                .split_vertically(chart_height);
            chart(&plot)?;
            draw_legend(&key, legend, layout)?;
            root.present()
        })();
        if let Err(e) = drawn {
            eprintln!("plot {title:?}: {e}");
        }
    }
    s
}

/// A square of each entry's colour, its text to the right.
fn draw_legend(area: &Area, legend: &[(RGBColor, &str)], layout: &LegendLayout) -> Drawn {
    let columns = layout.columns.max(1);
    for (i, (color, text)) in legend.iter().enumerate() {
        let x = layout.left + (i % columns) as i32 * layout.column_width;
        let y = LEGEND_GAP as i32 + (i / columns) as i32 * LEGEND_LINE as i32;
        area.draw(&Rectangle::new([(x, y), (x + 10, y + 10)], color.filled()))?;
        area.draw(&Text::new(
            *text,
            (x + 14, y + 5),
            TextStyle::from(("sans-serif", TEXT).into_font())
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// The texts of an SVG plotters wrote, unescaped, in order: what the
/// plots' tests look for.
#[cfg(test)]
pub fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..t.find("</text>")?];
            Some(
                body.trim_matches('\n')
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_and_legend_come_out_as_text() {
        let layout = LegendLayout {
            left: 10,
            columns: 2,
            column_width: 100,
        };
        let legend = [
            (rgb(0x112233), "a & b"),
            (rgb(0x445566), "c's"),
            (rgb(0), "d"),
        ];
        let svg = svg(300, 100, "<title>", &legend, &layout, |_| Ok(()));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(texts(&svg), ["<title>", "a & b", "c's", "d"]);
        assert!(svg.contains(r##"fill="#112233""##) && svg.contains(r##"fill="#445566""##));
        assert_eq!(rgb(0x9bb8d9), RGBColor(0x9b, 0xb8, 0xd9));
    }
}
