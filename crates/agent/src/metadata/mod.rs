//! The SmartOS metadata protocol (v2, with v1 for old clients), served to each guest on
//! its second serial port. (Being written.)
